package tailbuf

import "testing"

func TestFairCap(t *testing.T) {
	for _, tc := range []struct {
		lens       []int
		limit, cap int
	}{
		{[]int{3, 1003, 600, 200}, 10 << 10, 1003}, // fits: nothing cut
		{[]int{3, 1003, 600, 200}, 700, 248},       // 3 + 200 + 2×248 ≤ 700
		{[]int{3, 1003, 600, 200}, 600, 199},
		{nil, 10, 0},
		{[]int{10, 10}, 0, 0},
	} {
		if got := FairCap(tc.lens, tc.limit); got != tc.cap {
			t.Errorf("FairCap(%v, %d) = %d, want %d", tc.lens, tc.limit, got, tc.cap)
		}
	}
}
