package resync_test

import (
	"go/build"
	"strings"
	"testing"
)

// TestImports keeps resync pure: the standard library and the token bucket
// only, no I/O packages and nothing else of urbd.
func TestImports(t *testing.T) {
	for _, path := range []string{"github.com/urbd/urbd/resync", "github.com/urbd/urbd/resync/resynctest"} {
		pkg, err := build.Import(path, ".", 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range pkg.Imports {
			switch {
			case imp == "golang.org/x/time/rate":
			case strings.Contains(imp, "."):
				t.Errorf("%s imports %s", path, imp)
			case imp == "os" || imp == "net" || strings.HasPrefix(imp, "net/") || imp == "io/fs" || imp == "syscall":
				t.Errorf("%s imports %s: it must do no I/O", path, imp)
			}
		}
	}
}
