# syntax=docker/dockerfile:1
# The container image of calsync-operator: a release binary on a distroless base, run as a
# non-root user.
#
# The build stage runs scripts/build-release.sh, the same script as `make release`. No
# Docker engine runs in this project's CI, so `make test` in CI runs that script instead,
# which compiles the image's binary with the same command, flags and Cargo.lock.
#
#   docker build -t registry.example.edu/calsync-operator:0.1.0 .

# The Rust release matches the toolchain the project is developed and tested with. Debian 12
# (bookworm) matches the glibc of the distroless base below.
ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep downloaded crates and compiled dependencies between image builds;
# the binary is copied out of the cached target folder into /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/build-release.sh /out

# distroless/cc holds glibc, libgcc, CA certificates and time zone data, and no shell or
# package manager. The nonroot variant runs as user and group 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/calsync-operator /usr/local/bin/calsync-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/calsync-operator"]
CMD ["run"]
