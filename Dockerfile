# calyx's image for those who build with Docker; `make image` writes the
# same layout without a daemon. The DaemonSet runs /usr/local/bin/calyx-agent,
# and its install-cni init container copies /opt/calyx/cni/bin to the host.
#
#   docker build -t ghcr.io/calyx-net/calyx:dev .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN make build

# Static binaries (CGO_ENABLED=0): no base image, nothing but calyx.
FROM scratch
LABEL org.opencontainers.image.source=https://github.com/calyx-net/calyx
COPY --from=build /src/bin/calyx-agent /src/bin/calyxctl /usr/local/bin/
COPY --from=build /src/bin/calyx /src/bin/calyx-ipam /src/bin/portmap /src/bin/loopback /opt/calyx/cni/bin/
ENV PATH=/usr/local/bin
ENTRYPOINT ["/usr/local/bin/calyx-agent"]
