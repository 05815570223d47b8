package testenv

import (
	"errors"
	"fmt"
	"net/netip"
)

// Bounds of a requested subnet's prefix length.
const (
	MinSubnetBits = 16
	MaxSubnetBits = 29
)

// privateRanges are the RFC 1918 IPv4 ranges a subnet must lie in.
var privateRanges = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
}

// ValidateSubnet checks a requested subnet: an IPv4 CIDR with a prefix
// length of MinSubnetBits..MaxSubnetBits, inside 10.0.0.0/8, 172.16.0.0/12
// or 192.168.0.0/16, written as its network address (no host bits).
func ValidateSubnet(field, s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return &FieldError{field, fmt.Sprintf("%q is not an IPv4 CIDR such as 10.213.0.0/24", s)}
	}
	if p.Bits() < MinSubnetBits || p.Bits() > MaxSubnetBits {
		return &FieldError{field, fmt.Sprintf("%s: the prefix length must be /%d../%d", s, MinSubnetBits, MaxSubnetBits)}
	}
	if p.Masked() != p {
		return &FieldError{field, fmt.Sprintf("%s has host bits set: the network address is %s", s, p.Masked())}
	}
	for _, r := range privateRanges {
		if r.Contains(p.Addr()) {
			return nil
		}
	}
	return &FieldError{field, fmt.Sprintf("%s is not a private range: use 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16", s)}
}

// SubnetsOverlap reports whether two CIDRs (IPv4 or IPv6; host bits are
// ignored) share an address. Prefixes of different families never overlap.
func SubnetsOverlap(a, b string) (bool, error) {
	pa, err := netip.ParsePrefix(a)
	if err != nil {
		return false, fmt.Errorf("subnet %q: %w", a, err)
	}
	pb, err := netip.ParsePrefix(b)
	if err != nil {
		return false, fmt.Errorf("subnet %q: %w", b, err)
	}
	return pa.Masked().Overlaps(pb.Masked()), nil
}

// ErrNoFreeSubnet is returned by ChooseSubnet when every candidate overlaps.
var ErrNoFreeSubnet = errors.New("no free /24 left in 10.213.0.0-10.255.255.255")

// ChooseSubnet picks the first /24 in 10.213.0.0/16, then 10.214.0.0/16, ...
// up to 10.255.0.0/16 that overlaps none of used (the subnets of the
// engine's existing networks; empty strings are skipped, IPv6 subnets never
// overlap). The result is deterministic for a given used list.
func ChooseSubnet(used []string) (string, error) {
	prefixes := make([]netip.Prefix, 0, len(used))
	for _, u := range used {
		if u == "" {
			continue
		}
		p, err := netip.ParsePrefix(u)
		if err != nil {
			return "", fmt.Errorf("existing subnet %q: %w", u, err)
		}
		prefixes = append(prefixes, p.Masked())
	}
	for second := 213; second <= 255; second++ {
	next:
		for third := 0; third <= 255; third++ {
			c := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(second), byte(third), 0}), 24)
			for _, p := range prefixes {
				if p.Overlaps(c) {
					continue next
				}
			}
			return c.String(), nil
		}
	}
	return "", ErrNoFreeSubnet
}
