package app

import (
	"errors"
	"io"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestResolveTemporalIP(t *testing.T) {
	host := func() (string, error) { return "temporal", nil }
	lookup := func(addrs ...string) func(string) ([]net.IP, error) {
		return func(name string) ([]net.IP, error) {
			require.Equal(t, "temporal", name)
			var ips []net.IP
			for _, a := range addrs {
				ips = append(ips, net.ParseIP(a))
			}
			return ips, nil
		}
	}
	for _, tc := range []struct {
		flag    string
		lookup  func(string) ([]net.IP, error)
		want    string
		wantErr string
	}{
		{flag: "", want: DefaultTemporalIP},
		{flag: "10.1.2.3", want: "10.1.2.3"},
		// A container's name resolves to loopback (/etc/hosts) and its address.
		{flag: TemporalIPHostname, lookup: lookup("127.0.1.1", "172.18.0.5"), want: "172.18.0.5"},
		{flag: TemporalIPHostname, lookup: lookup("127.0.0.1", "::1"), wantErr: `"temporal" resolves to no address other hosts can dial`},
		{flag: TemporalIPHostname, lookup: func(string) ([]net.IP, error) { return nil, errors.New("no such host") },
			wantErr: `resolve "temporal": no such host`},
	} {
		got, err := resolveTemporalIP(tc.flag, host, tc.lookup)
		if tc.wantErr != "" {
			assert.ErrorContains(t, err, tc.wantErr, tc.flag)
			assert.ErrorContains(t, err, "--temporal-ip hostname")
			continue
		}
		require.NoError(t, err, tc.flag)
		assert.Equal(t, tc.want, got, tc.flag)
	}
}

func TestTemporalIPFlag(t *testing.T) {
	noEnv := func(string) string { return "" }
	for _, ok := range []string{"127.0.0.2", TemporalIPHostname} {
		cfg, err := ParseConfig([]string{"temporal", "--temporal-ip", ok}, noEnv, io.Discard)
		require.NoError(t, err, ok)
		assert.Equal(t, ok, cfg.TemporalIP)
	}
	_, err := ParseConfig([]string{"temporal", "--temporal-ip", "0.0.0.0"}, noEnv, io.Discard)
	assert.ErrorContains(t, err, "temporal-ip")
	_, err = ParseConfig([]string{"temporal", "--temporal-ip", "myhost"}, noEnv, io.Discard)
	assert.ErrorContains(t, err, `nor "hostname"`)
}
