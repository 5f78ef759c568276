# syntax=docker/dockerfile:1
#
# Patchloop's container image: a static (musl) binary on distroless/static,
# running as the unprivileged user 65532 with nothing else in the image but
# CA certificates (for feed URLs), /etc/passwd and time zone data.
#
#   docker build -t ghcr.io/patchloop/patchloop:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ... --push .
#
# The build stage needs only a C compiler for `ring` (TLS) and make for
# jemalloc (the binary's allocator); everything else is Rust. Dependencies
# are cached in their own layer.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-alpine AS build
RUN apk add --no-cache musl-dev make
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the manifests change.
# Cargo reads every target Cargo.toml declares before building anything, so
# each one needs a placeholder here, listed by path (tests/dockerfile.rs
# fails when a declared target is missing from this list).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && touch src/lib.rs \
 && for f in src/main.rs benches/engine.rs benches/controller.rs benches/remediation.rs benches/remediation_real.rs; do \
      echo 'fn main() {}' > "$f"; \
    done \
 && cargo build --release --locked \
 && rm -rf src benches
COPY src ./src
COPY benches ./benches
# musl targets link statically by default; touch so cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && cp target/release/patchloop /patchloop \
 && /patchloop --version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /patchloop /usr/local/bin/patchloop
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/patchloop"]
CMD ["run"]
