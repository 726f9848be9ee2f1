// Package trellis_test holds repository-wide checks.
package trellis_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPackagesHaveDocs fails when a package under cmd/ or internal/ has no
// package doc comment: every package says what it provides and why.
func TestPackagesHaveDocs(t *testing.T) {
	for _, root := range []string{"cmd", "internal"} {
		filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() || strings.Contains(path, "testdata") {
				return err
			}
			fset := token.NewFileSet()
			pkgs, err := parser.ParseDir(fset, path, func(fi os.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, parser.ParseComments|parser.PackageClauseOnly)
			if err != nil {
				t.Errorf("parse %s: %v", path, err)
				return nil
			}
			for name, pkg := range pkgs {
				documented := false
				for _, f := range pkg.Files {
					documented = documented || f.Doc != nil
				}
				if !documented && name != "main" {
					t.Errorf("package %s (%s) has no doc comment", name, path)
				}
			}
			return nil
		})
	}
}
