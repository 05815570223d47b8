package server

import (
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
)

// actorKey is the echo context key holding the authenticated token's name.
const actorKey = "orchestrator.actor"

// openPaths never require a token.
var openPaths = map[string]bool{"/health": true, "/metrics": true, OpenAPIPath: true}

// unauthorized is the 401 answer of requests without a valid token.
func unauthorized(c echo.Context, msg string) error {
	c.Response().Header().Set(echo.HeaderWWWAuthenticate, "Bearer")
	return &APIError{Status: http.StatusUnauthorized, Body: ErrorBody{Code: CodeUnauthorized, Message: msg}}
}

// auth requires `Authorization: Bearer <token>` with one of s.tokens on
// every path but /health and /metrics, and records the token's name as the
// request's actor. Tokens are compared in constant time and never logged.
func (s *Server) auth(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if len(s.tokens) == 0 || openPaths[c.Request().URL.Path] {
			return next(c)
		}
		name, given := s.tokenName(c)
		if !given {
			return unauthorized(c, "missing bearer token (Authorization: Bearer <token>)")
		}
		if name == "" {
			return unauthorized(c, "invalid bearer token")
		}
		c.Set(actorKey, name)
		return next(c)
	}
}

// tokenName returns the name of the request's bearer token if it is one of
// s.tokens ("" if not), and whether the request carried one at all.
func (s *Server) tokenName(c echo.Context) (name string, given bool) {
	h := c.Request().Header.Get(echo.HeaderAuthorization)
	scheme, token, found := strings.Cut(h, " ")
	token = strings.TrimSpace(token)
	if !found || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	for _, t := range s.tokens {
		// Every token is compared, so timing does not tell which matched.
		if subtle.ConstantTimeCompare([]byte(token), []byte(t.token)) == 1 && name == "" {
			name = t.name
		}
	}
	return name, true
}

// validToken reports whether the request carries one of s.tokens (on open
// paths too, where it is not required).
func (s *Server) validToken(c echo.Context) bool {
	name, _ := s.tokenName(c)
	return name != ""
}

type namedToken struct{ name, token string }
