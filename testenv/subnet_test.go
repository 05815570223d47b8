package testenv

import (
	"errors"
	"testing"
)

func TestValidateSubnet(t *testing.T) {
	for _, ok := range []string{"10.0.0.0/16", "10.213.0.0/24", "172.16.0.0/16", "172.31.255.248/29", "192.168.0.0/16", "192.168.10.0/24"} {
		if err := ValidateSubnet("s", ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "10.0.0.0", "10.0.0.0/33", "10.0.0.1/24", "10.0.0.0/15", "10.0.0.0/30", "11.0.0.0/16", "172.15.0.0/16", "172.32.0.0/16", "192.169.0.0/16", "fd00::/64", "::ffff:10.0.0.0/120", " 10.0.0.0/24"} {
		if err := ValidateSubnet("s", bad); err == nil {
			t.Errorf("%q accepted", bad)
		} else if f := fieldOf(t, err); f != "s" {
			t.Errorf("%q: field %q", bad, f)
		}
	}
}

func TestSubnetsOverlap(t *testing.T) {
	cases := []struct {
		a, b string
		want bool
	}{
		{"10.213.0.0/24", "10.213.0.0/24", true},
		{"10.213.0.0/24", "10.213.1.0/24", false},
		{"10.213.0.0/16", "10.213.7.0/24", true},
		{"10.213.7.0/24", "10.0.0.0/8", true},
		{"172.17.0.1/16", "172.17.5.0/24", true}, // host bits ignored
		{"192.168.0.0/24", "fd00::/64", false},
	}
	for _, c := range cases {
		got, err := SubnetsOverlap(c.a, c.b)
		if err != nil || got != c.want {
			t.Errorf("%s %s: %v %v", c.a, c.b, got, err)
		}
		got, _ = SubnetsOverlap(c.b, c.a)
		if got != c.want {
			t.Errorf("not symmetric: %s %s", c.a, c.b)
		}
	}
	if _, err := SubnetsOverlap("x", "10.0.0.0/8"); err == nil {
		t.Error("bad a accepted")
	}
	if _, err := SubnetsOverlap("10.0.0.0/8", "10.0.0.0"); err == nil {
		t.Error("bad b accepted")
	}
}

func TestChooseSubnet(t *testing.T) {
	cases := []struct {
		used []string
		want string
	}{
		{nil, "10.213.0.0/24"},
		{[]string{"172.17.0.0/16", "", "fd00::/64", "192.168.0.0/20"}, "10.213.0.0/24"},
		{[]string{"10.213.0.0/24", "10.213.1.0/24"}, "10.213.2.0/24"},
		{[]string{"10.213.1.0/24", "10.213.0.0/24"}, "10.213.2.0/24"},
		{[]string{"10.213.0.128/25"}, "10.213.1.0/24"},
		{[]string{"10.213.0.0/23", "10.213.2.5/32"}, "10.213.3.0/24"},
		{[]string{"10.213.0.0/16"}, "10.214.0.0/24"},
		{[]string{"10.208.0.0/12"}, "10.224.0.0/24"}, // 10.208-10.223
		{[]string{"10.200.0.0/13", "10.213.0.0/16", "10.214.0.0/15"}, "10.216.0.0/24"},
	}
	for _, c := range cases {
		got, err := ChooseSubnet(c.used)
		if err != nil || got != c.want {
			t.Errorf("%v: %q %v, want %s", c.used, got, err, c.want)
			continue
		}
		for _, u := range c.used {
			if u == "" {
				continue
			}
			if o, _ := SubnetsOverlap(got, u); o {
				t.Errorf("%s overlaps %s", got, u)
			}
		}
		if err := ValidateSubnet("s", got); err != nil {
			t.Errorf("chosen %s invalid: %v", got, err)
		}
	}
	if _, err := ChooseSubnet([]string{"10.0.0.0/8"}); !errors.Is(err, ErrNoFreeSubnet) {
		t.Errorf("full: %v", err)
	}
	if _, err := ChooseSubnet([]string{"bogus"}); err == nil {
		t.Error("bogus used subnet accepted")
	}
}
