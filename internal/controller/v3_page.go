package controller

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/trellis-c2c/trellis/internal/api"
)

// maxPerPage is Cloud Controller's largest page.
const maxPerPage = 5000

// writeV3BadQuery answers a bad query parameter as Cloud Controller does.
func writeV3BadQuery(w http.ResponseWriter, detail string) {
	writeJSON(w, http.StatusBadRequest, api.V3Errors{Errors: []api.V3Error{{
		Detail: "The query parameter is invalid: " + detail, Title: "CF-BadQueryParameter", Code: 10005}}})
}

// pageParams reads page and per_page. Without either, the answer is one
// page holding everything (what trellis's own client expects); with
// either, pages are Cloud Controller's (per_page 50 unless given).
func pageParams(r *http.Request) (page, perPage int, paged bool, err error) {
	q := r.URL.Query()
	page, perPage = 1, 50
	if v, ok := q["page"]; ok {
		paged = true
		n, e := strconv.Atoi(v[0])
		if e != nil || n < 1 {
			return 0, 0, true, fmt.Errorf("Page must be greater than 0")
		}
		page = n
	}
	if v, ok := q["per_page"]; ok {
		paged = true
		n, e := strconv.Atoi(v[0])
		if e != nil || n < 1 || n > maxPerPage {
			return 0, 0, true, fmt.Errorf("Per page must be between 1 and %d", maxPerPage)
		}
		perPage = n
	}
	return page, perPage, paged, nil
}

// pageLink is the absolute link to page n of the request's list.
func pageLink(r *http.Request, n, perPage int) *api.Link {
	u := url.URL{Scheme: "https", Host: r.Host, Path: r.URL.Path}
	q := r.URL.Query()
	q.Set("page", strconv.Itoa(n))
	q.Set("per_page", strconv.Itoa(perPage))
	u.RawQuery = q.Encode()
	return &api.Link{Href: u.String()}
}

// writeList answers a v3 list: one page of items with Cloud Controller's
// pagination (absolute first, last, next and previous links), or a 400
// for a bad page or per_page.
func writeList[T any](w http.ResponseWriter, r *http.Request, items []T) {
	writeListIncluded(w, r, items, nil)
}

// writeListIncluded is writeList with Cloud Controller's "included"
// resources (include=…), made by included from the page's items when it
// is not nil.
func writeListIncluded[T any](w http.ResponseWriter, r *http.Request, items []T, included func(page []T) any) {
	page, perPage, paged, err := pageParams(r)
	if err != nil {
		writeV3BadQuery(w, err.Error())
		return
	}
	if items == nil {
		items = []T{}
	}
	if !paged {
		perPage = max(len(items), 1)
	}
	total := len(items)
	pages := max((total+perPage-1)/perPage, 1)
	lo := min((page-1)*perPage, total)
	hi := min(lo+perPage, total)
	p := api.Pagination{TotalResults: total, TotalPages: pages,
		First: *pageLink(r, 1, perPage), Last: *pageLink(r, pages, perPage)}
	if page < pages {
		p.Next = pageLink(r, page+1, perPage)
	}
	if page > 1 {
		p.Previous = pageLink(r, min(page-1, pages), perPage)
	}
	if included == nil {
		writeJSON(w, http.StatusOK, api.List[T]{Pagination: p, Resources: items[lo:hi]})
		return
	}
	writeJSON(w, http.StatusOK, struct {
		api.List[T]
		Included any `json:"included"`
	}{api.List[T]{Pagination: p, Resources: items[lo:hi]}, included(items[lo:hi])})
}
