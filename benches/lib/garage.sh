# Sourced by benchmarks: start a single-node Garage on loopback for an S3
# repository. After `garage_start DIR`, these are exported: S3_ENDPOINT,
# S3_REGION, S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; `garage_stop`
# ends it. The binary: GARAGE_BIN, then PATH, then ~/.cargo/bin/garage.

garage_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

garage_start() {
    local dir=$1
    GARAGE=${GARAGE_BIN:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}
    [ -x "$GARAGE" ] || { echo "no garage binary (set GARAGE_BIN or: cargo install garage --locked)" >&2; return 2; }
    rm -rf "$dir"; mkdir -p "$dir"
    local rpc s3 admin
    rpc=$(garage_free_port); s3=$(garage_free_port); admin=$(garage_free_port)
    cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
api_bind_addr = "127.0.0.1:$s3"
s3_region = "garage"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
    GARAGE_CONF=$dir/garage.toml
    RUST_LOG=garage=warn "$GARAGE" -c "$GARAGE_CONF" server >"$dir/garage.log" 2>&1 &
    GARAGE_PID=$!
    local i
    for i in $(seq 1 300); do "$GARAGE" -c "$GARAGE_CONF" status >/dev/null 2>&1 && break; sleep 0.1; done
    local node
    node=$("$GARAGE" -c "$GARAGE_CONF" node id -q | cut -d@ -f1)
    "$GARAGE" -c "$GARAGE_CONF" layout assign -z dc1 -c 100G "$node" >/dev/null
    "$GARAGE" -c "$GARAGE_CONF" layout apply --version 1 >/dev/null
    export AWS_ACCESS_KEY_ID="GK$(openssl rand -hex 12)" AWS_SECRET_ACCESS_KEY="$(openssl rand -hex 32)"
    "$GARAGE" -c "$GARAGE_CONF" key import --yes -n bench "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >/dev/null
    "$GARAGE" -c "$GARAGE_CONF" bucket create bench >/dev/null
    "$GARAGE" -c "$GARAGE_CONF" bucket allow --read --write --owner bench --key "$AWS_ACCESS_KEY_ID" >/dev/null
    export S3_ENDPOINT="http://127.0.0.1:$s3" S3_REGION=garage S3_BUCKET=bench
}

garage_stop() { [ -n "${GARAGE_PID:-}" ] && kill "$GARAGE_PID" 2>/dev/null; wait "$GARAGE_PID" 2>/dev/null || true; }
