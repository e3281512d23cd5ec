package sandbox

import (
	"reflect"
	"testing"
)

// TestShapeKeepsEarly: a spare is started with spec.shape(), and its init
// refuses a spec whose early part differs, so shape must keep every field
// early reads (a missing one made every pooled build with it fail).
func TestShapeKeepsEarly(t *testing.T) {
	spec := &Spec{Root: "/r", RootSize: 1 << 20, ShmSize: "32m", Hostname: "h", Domainname: "d", UID: 1000, GID: 100,
		UIDMap: []IDMap{{Inside: 1000, Outside: 5000, Count: 1}}, GIDMap: []IDMap{{Inside: 100, Outside: 5000, Count: 1}}, Setgroups: true}
	e := reflect.ValueOf(earlyOf(spec))
	for i := range e.NumField() {
		if e.Field(i).IsZero() {
			t.Fatalf("the test's spec leaves early.%s zero: set it", e.Type().Field(i).Name)
		}
	}
	if got, want := earlyOf(spec.shape()), earlyOf(spec); got != want {
		t.Errorf("shape's early %+v, want %+v", got, want)
	}
}
