package flowlog

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestDocComments fails when this package or one of its exported names has
// no doc comment.
func TestDocComments(t *testing.T) {
	fset := token.NewFileSet()
	files, _ := filepath.Glob("*.go")
	hasPkgDoc := false
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		hasPkgDoc = hasPkgDoc || f.Doc != nil
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Name.IsExported() && d.Doc == nil {
					t.Errorf("%s: %s has no doc comment", fset.Position(d.Pos()), d.Name)
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					var names []*ast.Ident
					var doc *ast.CommentGroup
					switch s := s.(type) {
					case *ast.TypeSpec:
						names, doc = []*ast.Ident{s.Name}, s.Doc
					case *ast.ValueSpec:
						names, doc = s.Names, s.Doc
					}
					for _, n := range names {
						if n.IsExported() && doc == nil && d.Doc == nil {
							t.Errorf("%s: %s has no doc comment", fset.Position(n.Pos()), n)
						}
					}
				}
			}
		}
	}
	if !hasPkgDoc {
		t.Error("package flowlog has no package doc comment")
	}
}
