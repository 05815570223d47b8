# syntax=docker/dockerfile:1
# Orchestrator image: one binary for every mode (serve, api, worker,
# temporal, migrate) plus Nushell and the shipped provisioning scripts.
#   docker build -t provisioning/orchestrator .
# See deploy/README.md for the compose deployment.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/orchestrator ./cmd/orchestrator

# Nushell, pinned to the version the tests use (package.json), from its npm
# package; npm picks the binary for the build platform's architecture.
FROM node:22-bookworm-slim AS nu
RUN npm install --prefix /nu --no-audit --no-fund nushell@0.115.1 \
 && cp /nu/node_modules/@nushell/linux-*/bin/nu /usr/local/bin/nu \
 && /usr/local/bin/nu --version

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/orchestrator --create-home orchestrator
COPY --from=nu /usr/local/bin/nu /usr/local/bin/nu
COPY --from=build /out/orchestrator /usr/local/bin/orchestrator
WORKDIR /opt/orchestrator
COPY core ./core
COPY nulib ./nulib
USER orchestrator
ENV ORCHESTRATOR_HOST=0.0.0.0 \
    ORCHESTRATOR_DATA_DIR=/var/lib/orchestrator \
    ORCHESTRATOR_NU_PATH=/usr/local/bin/nu \
    ORCHESTRATOR_PROVISIONING_PATH=/opt/orchestrator/core/nulib/provisioning \
    ORCHESTRATOR_LOG_FORMAT=json
VOLUME /var/lib/orchestrator
EXPOSE 8080
# tini as PID 1 reaps the orphans of provisioning scripts.
ENTRYPOINT ["/usr/bin/tini", "--", "orchestrator"]
CMD ["serve", "--host", "0.0.0.0"]
