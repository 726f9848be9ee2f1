package api

import (
	"context"
	"net/http"
	"time"
)

// User is a person who logs in with a name and password (the cf CLI's
// `cf auth`), as POST and GET /trellis/v1/users show it: never its
// password or hash.
type User struct {
	GUID      string      `json:"guid"`
	Name      string      `json:"name"`
	Admin     bool        `json:"admin"`
	Spaces    []UserSpace `json:"spaces"`
	CreatedAt time.Time   `json:"created_at"`
	UpdatedAt time.Time   `json:"updated_at"`
}

// UserSpace is a user's role in a space. The one role is "developer":
// network.write in that space.
type UserSpace struct {
	SpaceGUID string `json:"space_guid"`
	Role      string `json:"role"`
}

// UserRequest is the body of POST /trellis/v1/users. An admin user takes
// no spaces; others need at least one.
type UserRequest struct {
	Name     string      `json:"name"`
	Password string      `json:"password"`
	Admin    bool        `json:"admin,omitempty"`
	Spaces   []UserSpace `json:"spaces,omitempty"`
}

// PasswordRequest is the body of PUT /trellis/v1/users/{guid}/password.
type PasswordRequest struct {
	Password string `json:"password"`
}

// RoleDeveloper is a space developer: network.write in the space.
const RoleDeveloper = "developer"

// CreateUser creates a user (admin only).
func (c *Client) CreateUser(ctx context.Context, r UserRequest) (User, error) {
	var u User
	err := c.do(ctx, http.MethodPost, "trellis/v1/users", nil, r, &u)
	return u, err
}

// Users lists the users (admin only).
func (c *Client) Users(ctx context.Context) ([]User, error) {
	var l List[User]
	err := c.do(ctx, http.MethodGet, "trellis/v1/users", nil, nil, &l)
	return l.Resources, err
}

// DeleteUser deletes a user (admin only): its tokens stop working on the
// next request.
func (c *Client) DeleteUser(ctx context.Context, guid string) error {
	p, err := itemPath("trellis/v1/users", guid)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, p, nil, nil, nil)
}

// SetUserPassword sets a user's password (an admin: any user's; a user:
// its own): the user's tokens signed before stop working.
func (c *Client) SetUserPassword(ctx context.Context, guid, password string) error {
	p, err := itemPath("trellis/v1/users", guid)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPut, p+"/password", nil, PasswordRequest{Password: password}, nil)
}
