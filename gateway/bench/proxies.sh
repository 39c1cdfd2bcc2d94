#!/usr/bin/env bash
# Issues 6 and 7: the Isthmus gateway's data plane against HAProxy and nginx
# on the same backend, in one run, and the section between
# <!-- proxies-bench:start --> and <!-- proxies-bench:end --> of
# docs/benchmarks.md rewritten with the numbers (appended if absent).
#
#   gateway/bench/proxies.sh
#
# Everything runs on loopback: a backend nginx (static body and a large file
# over TLS) and the load generators on CPU 1; one proxy at a time on CPU 0
# with one worker (Isthmus: `isthmus-gateway --role ingress` with one tokio
# worker thread, configured by a real `isthmus control` over xDS from Istio
# YAML; HAProxy `nbthread 1`; nginx `worker_processes 1`), keep-alive on both
# legs, access logs off. Measures, back to back:
#   - HTTP/1.1 keep-alive req/s (wrk) and proxy CPU per 1,000 requests;
#   - added latency p50/p99 over a direct connection at ~1,000 req/s over
#     16 connections (hey -q 62 -c 16; -q is per connection);
#   - TLS passthrough download throughput vs HAProxy mode tcp and direct;
#   - the sidecar's resident memory idle and under load;
#   - TLS termination, HTTP/1.1 and HTTP/2 (h2load), fixed-rate p50/p99 and
#     maximum throughput.
#
# Environment: ISTHMUS_BIN=path (the `isthmus` binary, for the control
# plane) and ISTHMUS_GATEWAY_BIN=path (the proxy binary, `isthmus-gateway`)
# skip the builds (default: `isthmus` with --release and `isthmus-gateway`
# as the image ships it, by `gateway/build-proxy.sh --pgo`, into
# CARGO_TARGET_DIR or target);
# DUR=seconds per measurement (default 10); ROUNDS=rounds of the
# throughput and latency measurements, the proxies interleaved in each, the
# median reported (default 5); IDLE_STARTS=starts of the sidecar whose
# idle memory is measured, the median reported (default 3); NOTE='...'
# adds a sentence to the section; NO_DOC=1 prints the section instead of
# writing the doc;
# PERF_OUT=file also profiles the Isthmus ingress under load (perf);
# HOLD=file measures nothing: it sets everything up, writes the addresses
# and PIDs to the file and keeps it all running until SIGTERM (or Ctrl-C;
# a shell ignores SIGINT in a job it started in the background).
# Needs root for apt-get when a tool is missing. Takes about 20 minutes
# (five rounds) plus the build.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
doc="docs/benchmarks.md"
DUR="${DUR:-10}"
ROUNDS="${ROUNDS:-5}"
IDLE_STARTS="${IDLE_STARTS:-3}"
WARM=2

need=()
for t in haproxy:haproxy nginx:nginx wrk:wrk hey:hey h2load:nghttp2-client curl:curl openssl:openssl taskset:util-linux; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
if ((${#need[@]})); then
  echo "installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if (($(nproc) < 2)); then
  echo "needs 2 CPUs (proxy on CPU 0, client and backend on CPU 1)" >&2
  exit 1
fi

if [[ -n "${ISTHMUS_BIN:-}" && -n "${ISTHMUS_GATEWAY_BIN:-}" ]]; then
  bin="$ISTHMUS_BIN"
  gw="$ISTHMUS_GATEWAY_BIN"
else
  cargo build --release -p isthmus-control --bin isthmus
  bin="${CARGO_TARGET_DIR:-target}/release/isthmus"
  # The proxy as the image ships it.
  gw="${CARGO_TARGET_DIR:-target}/isthmus-gateway.shipped"
  ISTHMUS_BIN="$bin" gateway/build-proxy.sh --pgo "$gw"
fi
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
gw="$(cd "$(dirname "$gw")" && pwd)/$(basename "$gw")"

work="$(mktemp -d /tmp/isthmus-proxies.XXXXXX)"
# nginx workers run as an unprivileged user and must read the files.
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  sleep 0.5
  for p in "${pids[@]}"; do
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "[$(date -u +%T)] $*" >&2; }

# Addresses: one loopback IP per role so the listeners never collide.
BACKEND=127.0.0.1 # backend nginx: 18000 small body, 18443 TLS big file
HAP=127.0.0.2     # HAProxy: 8080 http, 8443 https, 9443 tcp
NGX=127.0.0.3     # nginx proxy: 8080 http, 8443 https
CTL=127.0.0.4     # isthmus control
ING=127.0.0.5     # isthmus ingress: 8080 http, 8443 https, 9443 TLS passthrough
SIDE=127.0.0.6    # isthmus sidecar inbound 18000 -> the backend
SIDE_OUT=127.0.0.7
# 1 GiB: a 256 MiB download took half a second on loopback, too short to
# measure more than TCP start-up and noise.
BIG_MB=1024

# ---------------------------------------------------------------- files
mkdir -p "$work"/{www,pki,ctl/config,ctl/data,logs,ngx-backend,ngx-proxy}
head -c 100 /dev/zero | tr '\0' 'x' >"$work/www/index.html"
head -c $((BIG_MB * 1024 * 1024)) /dev/urandom >"$work/www/big"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test,DNS:big.bench.test \
  -keyout "$work/pki/key.pem" -out "$work/pki/cert.pem" 2>/dev/null
cat "$work/pki/cert.pem" "$work/pki/key.pem" >"$work/pki/haproxy.pem"

cat >"$work/ngx-backend/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $work/ngx-backend/nginx.pid;
error_log $work/logs/backend-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path $work/ngx-backend;
  proxy_temp_path $work/ngx-backend;
  fastcgi_temp_path $work/ngx-backend;
  uwsgi_temp_path $work/ngx-backend;
  scgi_temp_path $work/ngx-backend;
  server {
    listen $BACKEND:18000 reuseport backlog=4096;
    root $work/www;
  }
  server {
    listen $BACKEND:18443 ssl;
    ssl_certificate $work/pki/cert.pem;
    ssl_certificate_key $work/pki/key.pem;
    root $work/www;
  }
}
EOF

cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend http
  bind $HAP:8080
  default_backend web
frontend https
  bind $HAP:8443 ssl crt $work/pki/haproxy.pem alpn h2,http/1.1
  default_backend web
backend web
  server b1 $BACKEND:18000
frontend tcp
  mode tcp
  bind $HAP:9443
  default_backend big
backend big
  mode tcp
  server b1 $BACKEND:18443
EOF

cat >"$work/ngx-proxy/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $work/ngx-proxy/nginx.pid;
error_log $work/logs/nginx-proxy-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path $work/ngx-proxy;
  proxy_temp_path $work/ngx-proxy;
  fastcgi_temp_path $work/ngx-proxy;
  uwsgi_temp_path $work/ngx-proxy;
  scgi_temp_path $work/ngx-proxy;
  upstream web {
    server $BACKEND:18000;
    keepalive 128;
    keepalive_requests 100000000;
  }
  server {
    listen $NGX:8080;
    listen $NGX:8443 ssl http2;
    ssl_certificate $work/pki/cert.pem;
    ssl_certificate_key $work/pki/key.pem;
    location / {
      proxy_pass http://web;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF

# Isthmus: a one-cluster mesh from files, its CA, and the Istio resources
# the ingress and the sidecar get from the control plane's translation.
"$bin" ca init --out "$work/pki/root" >/dev/null
"$bin" ca intermediate --root-dir "$work/pki/root" --cluster bench --out "$work/ctl/ca" \
  --trust-domain cluster.local >/dev/null
echo "bench-sidecar-token bench/bench-app" >"$work/ctl/tokens"
echo "bench-sidecar-token" >"$work/sidecar-token"
b64() { base64 -w0 <"$1"; }
cat >"$work/ctl/config/mesh.yaml" <<EOF
apiVersion: isthmus.io/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
  namespace: istio-system
spec:
  clusterId: bench
  network: net-bench
  trustDomain: cluster.local
  locality:
    region: r1
    zone: z1
  gateways:
    eastWest: $CTL:15443
    ingress:
    - $ING:8080
  federation:
    listen: $CTL:15031
    peers: []
EOF
cat >"$work/ctl/config/bench.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: bench-cred, namespace: istio-system}
type: kubernetes.io/tls
data:
  tls.crt: $(b64 "$work/pki/cert.pem")
  tls.key: $(b64 "$work/pki/key.pem")
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bench, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: bench-cred}
  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: [big.bench.test]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: istio-system}
spec:
  hosts: [web.bench.internal]
  ports: [{number: 18000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: $BACKEND}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: big, namespace: istio-system}
spec:
  hosts: [big.bench.internal]
  ports: [{number: 18443, name: tls, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: $BACKEND}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [bench]
  http:
  - route:
    - destination: {host: web.bench.internal, port: {number: 18000}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: big, namespace: istio-system}
spec:
  hosts: [big.bench.test]
  gateways: [bench]
  tls:
  - match: [{port: 9443, sniHosts: [big.bench.test]}]
    route:
    - destination: {host: big.bench.internal, port: {number: 18443}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bench}
spec:
  mtls: {mode: PERMISSIVE}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench-app, namespace: bench}
spec:
  hosts: [bench-app.bench.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 18000, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: bench-app}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: bench-app-1, namespace: bench}
spec:
  address: $SIDE
  labels: {app: bench-app}
  serviceAccount: bench-app
EOF

# ---------------------------------------------------------------- processes
# start NAME CPU CMD...: in the background, pinned; its PID in pid_NAME.
start() {
  local name="$1" cpu="$2"
  shift 2
  taskset -c "$cpu" "$@" >"$work/logs/$name.out" 2>&1 &
  pids+=($!)
  printf -v "pid_$name" '%s' "$!"
}

wait_http() { # URL [curl args]: until it answers 200 (deadline 60 s)
  local url="$1" deadline=$((SECONDS + 60))
  shift
  until [[ "$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" || true)" == 200 ]]; do
    if ((SECONDS > deadline)); then
      echo "no 200 from $url within 60 s; logs in $work/logs:" >&2
      tail -n 20 "$work"/logs/*.out >&2 || true
      trap - EXIT
      cleanup_keep_logs
      exit 1
    fi
    sleep 0.2
  done
}
cleanup_keep_logs() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  echo "(work dir kept: $work)" >&2
}

log "starting backend, HAProxy, nginx, isthmus control"
start backend 1 nginx -c "$work/ngx-backend/nginx.conf" -e "$work/logs/backend-error.log"
start haproxy 0 haproxy -f "$work/haproxy.cfg"
start nginx 0 nginx -c "$work/ngx-proxy/nginx.conf" -e "$work/logs/nginx-proxy-error.log"
start control 1 "$bin" --log warn control --config-dir "$work/ctl/config" --ca-dir "$work/ctl/ca" \
  --data-dir "$work/ctl/data" --grpc-addr "$CTL:15012" --plaintext-xds-addr "$CTL:15010" \
  --admin-addr "$CTL:15014" --bootstrap-tokens "$work/ctl/tokens"
wait_http "http://$BACKEND:18000/"
wait_http "http://$CTL:15014/readyz"

log "starting the isthmus ingress (1 worker, CPU 0) and sidecar"
TOKIO_WORKER_THREADS=1 start ingress 0 "$gw" --log warn --role ingress \
  --xds "http://$CTL:15010" --ip "$ING" --pod isthmus-ingressgateway \
  --namespace istio-system --service-account isthmus-ingressgateway --cluster-id bench \
  --label istio=ingressgateway --admin "$ING:15000" --drain-time 1s
start_sidecar() {
  TOKIO_WORKER_THREADS=1 start sidecar 0 "$gw" --log warn --role sidecar \
    --xds "https://$CTL:15012" --ca "$CTL:15012" --root-cert "$work/pki/root/root-cert.pem" \
    --token-file "$work/sidecar-token" --ip "$SIDE" --pod bench-app-1 --namespace bench \
    --service-account bench-app --cluster-id bench --label app=bench-app \
    --admin "$SIDE:15000" --app-address "$BACKEND" --outbound-bind "$SIDE_OUT" --drain-time 1s
}
start_sidecar

for u in "http://$HAP:8080/" "https://$HAP:8443/" "http://$NGX:8080/" "https://$NGX:8443/" \
  "http://$ING:8080/" "https://$ING:8443/" "http://$SIDE:18000/"; do
  wait_http "$u"
done
wait_http "https://big.bench.test:9443/index.html" --resolve "big.bench.test:9443:$ING"
wait_http "https://big.bench.test:9443/index.html" --resolve "big.bench.test:9443:$HAP"

if [[ -n "${HOLD:-}" ]]; then
  # Keep the setup up for measuring by hand; what runs where goes to $HOLD.
  {
    echo "work=$work"
    for p in ingress sidecar haproxy nginx backend control; do
      v="pid_$p"
      echo "$v=${!v}"
    done
    printf '%s\n' "http_direct=http://$BACKEND:18000/" "http_isthmus=http://$ING:8080/" \
      "http_haproxy=http://$HAP:8080/" "http_nginx=http://$NGX:8080/" \
      "https_isthmus=https://$ING:8443/" "https_haproxy=https://$HAP:8443/" \
      "https_nginx=https://$NGX:8443/" "pass_direct=$BACKEND:18443" \
      "pass_isthmus=$ING:9443" "pass_haproxy=$HAP:9443" "sidecar=http://$SIDE:18000/"
  } >"$HOLD"
  log "set up; addresses and PIDs in $HOLD; holding until SIGTERM or Ctrl-C"
  trap 'exit 0' INT TERM
  sleep infinity &
  pids+=($!)
  wait $!
fi

# ---------------------------------------------------------------- measuring
# CPU ticks (utime+stime) of a process and its children (nginx's worker).
ticks() {
  local t=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    if [[ -r /proc/$p/stat ]]; then
      # Fields after the ")" of the command name: utime is the 12th, stime the 13th.
      t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    fi
  done
  echo "$t"
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hz="$(getconf CLK_TCK)"
R="$work/results"
: >"$R"
# A key measured in several rounds has several values; get gives their median.
put() { echo "$1=$2" >>"$R"; }
get() {
  awk -F= -v k="$1" '$1 == k {print $2}' "$R" | sort -g |
    awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else if (NR) printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

# wrk_run KEY URL PID [wrk args]: max throughput; CPU of PID over the run.
wrk_run() {
  local key="$1" url="$2" pid="$3" out t0 t1 rps reqs
  shift 3
  taskset -c 1 wrk -t1 -c64 -d"${WARM}s" "$@" "$url" >/dev/null
  t0="$(ticks "$pid")"
  out="$(taskset -c 1 wrk -t1 -c64 -d"${DUR}s" "$@" "$url")"
  t1="$(ticks "$pid")"
  rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
  reqs="$(awk '/requests in/ {print $1}' <<<"$out")"
  if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then
    log "$key: errors: $(grep 'Non-2xx\|Socket errors' <<<"$out")"
  fi
  put "$key.rps" "$rps"
  if [[ "$pid" != - ]]; then
    put "$key.cpu_ms_per_1k" "$(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f", d * 1000 / hz / n * 1000}')"
    put "$key.cpu_pct" "$(awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$DUR" 'BEGIN {printf "%.0f", d / hz / s * 100}')"
  fi
  log "$key: $rps req/s"
}

# hey_run KEY URL [hey args]: ~1,000 req/s over 16 connections; p50/p99 in ms.
hey_run() {
  local key="$1" url="$2" out p50 p99
  shift 2
  taskset -c 1 hey -q 62 -c 16 -z "${WARM}s" "$@" "$url" >/dev/null
  out="$(taskset -c 1 hey -q 62 -c 16 -z "${DUR}s" "$@" "$url")"
  p50="$(awk '/ 50%+ in/ {printf "%.3f", $3 * 1000}' <<<"$out")"
  p99="$(awk '/ 99%+ in/ {printf "%.3f", $3 * 1000}' <<<"$out")"
  put "$key.p50" "$p50"
  put "$key.p99" "$p99"
  put "$key.qps" "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")"
  if ! grep -q '\[200\]' <<<"$out" || grep -q 'Error distribution' <<<"$out"; then
    log "$key: errors or non-200: $(sed -n '/Status code/,$p' <<<"$out" | tr '\n' ' ')"
  fi
  log "$key: p50 $p50 ms p99 $p99 ms"
}

# h2_run KEY URL PID: HTTP/2 max throughput (64 connections x 10 streams).
h2_run() {
  local key="$1" url="$2" pid="$3" out t0 t1 reqs rps
  taskset -c 1 h2load -c 64 -m 10 -t 1 -D "$WARM" "$url" >/dev/null
  t0="$(ticks "$pid")"
  out="$(taskset -c 1 h2load -c 64 -m 10 -t 1 -D "$DUR" "$url")"
  t1="$(ticks "$pid")"
  rps="$(awk '/^finished in/ {gsub(",", ""); print $4}' <<<"$out")"
  put "$key.rps" "$rps"
  reqs="$(awk '/^requests:/ {print $8}' <<<"$out")"
  put "$key.cpu_ms_per_1k" "$(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f", d * 1000 / hz / n * 1000}')"
  put "$key.cpu_pct" "$(awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$DUR" 'BEGIN {printf "%.0f", d / hz / s * 100}')"
  grep -q 'errored 0\b\|0 errored' <<<"$out" || log "$key: $(grep '^requests:' <<<"$out")"
  log "$key: $rps req/s"
}

# cpu1_ticks: CPU 1's busy and total ticks (/proc/stat; idle and iowait
# are the 4th and 5th counters).
cpu1_ticks() {
  awk '$1 == "cpu1" {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}

# pass_run KEY IP PORT PID: one download of the big file over TLS, MB/s,
# the share of CPU 0 the proxy (PID, or - for none) used meanwhile, and how
# busy CPU 1 (client and backend) was.
pass_run() {
  local key="$1" ip="$2" port="$3" pid="$4" t0 t1 s0 s1 b c0 c1 mbps
  t0="$([[ "$pid" == - ]] || ticks "$pid")"
  c0="$(cpu1_ticks)"
  s0="$(date +%s%N)"
  b="$(taskset -c 1 curl -sk --resolve "big.bench.test:$port:$ip" -o /dev/null \
    -w '%{speed_download}' "https://big.bench.test:$port/big")"
  s1="$(date +%s%N)"
  c1="$(cpu1_ticks)"
  mbps="$(awk -v b="$b" 'BEGIN {printf "%.0f", b / 1e6}')"
  put "$key.mbps" "$mbps"
  put "$key.cpu1_pct" "$(awk -v a="$c0" -v b="$c1" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f", (y[1] - x[1]) / (y[2] - x[2]) * 100}')"
  if [[ "$pid" != - ]]; then
    t1="$(ticks "$pid")"
    put "$key.pass_cpu_pct" "$(awk -v d=$((t1 - t0)) -v hz="$hz" -v ns=$((s1 - s0)) 'BEGIN {printf "%.0f", d / hz / (ns / 1e9) * 100}')"
  fi
  log "$key: $mbps MB/s"
}

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
started="$(date -u '+%Y-%m-%d %H:%M UTC')"

put ingress.rss_idle_kb "$(rss_kb "$pid_ingress")"
# The idle sidecar's RSS moves by a few hundred KiB from one start to the
# next (which start-up paths ran), so it is the median of IDLE_STARTS starts;
# the last one stays up for the load test.
log "idle sidecar, ${IDLE_STARTS} starts"
for i in $(seq "$IDLE_STARTS"); do
  if ((i > 1)); then
    kill "$pid_sidecar"
    while kill -0 "$pid_sidecar" 2>/dev/null; do sleep 0.1; done
    start_sidecar
    wait_http "http://$SIDE:18000/"
  fi
  sleep 2
  put sidecar.rss_idle_kb "$(rss_kb "$pid_sidecar")"
  log "sidecar start $i: $(rss_kb "$pid_sidecar") KiB"
done

# rounds STEP NAME...: STEP NAME for every NAME, ROUNDS times, starting
# each round one NAME later, so that no proxy always runs right after the
# same other one (runs here drift with the machine's load).
rounds() {
  local step="$1" round i
  shift
  local names=("$@")
  for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for ((i = 0; i < ${#names[@]}; i++)); do
      "$step" "${names[(i + round - 1) % ${#names[@]}]}"
    done
  done
}
declare -A http_url=([direct]="http://$BACKEND:18000/" [isthmus]="http://$ING:8080/"
  [haproxy]="http://$HAP:8080/" [nginx]="http://$NGX:8080/")
declare -A tls_url=([isthmus]="https://$ING:8443/" [haproxy]="https://$HAP:8443/"
  [nginx]="https://$NGX:8443/")
declare -A pid_of=([direct]=- [isthmus]="$pid_ingress" [haproxy]="$pid_haproxy"
  [nginx]="$pid_nginx")

log "HTTP/1.1 keep-alive, max throughput (wrk -c64, ${DUR}s each)"
h1_max() {
  wrk_run "$1" "${http_url[$1]}" "${pid_of[$1]}"
  [[ "$1" != isthmus ]] || put ingress.rss_load_kb "$(rss_kb "$pid_ingress")"
}
rounds h1_max direct isthmus haproxy nginx

log "fixed rate ~1,000 req/s, 16 connections (hey)"
h1_rate() { hey_run "$1" "${http_url[$1]}"; }
rounds h1_rate direct isthmus haproxy nginx

log "TLS passthrough, ${BIG_MB} MiB download"
# Read the file back into the page cache first: written minutes ago, it may
# have been reclaimed since (kdamond does that on the AMD EPYC host), and the
# first download then ran at disk speed (29 MB/s direct in a run).
cat "$work/www/big" >/dev/null
declare -A pass_addr=([direct]="$BACKEND 18443" [isthmus]="$ING 9443" [haproxy]="$HAP 9443")
pass_one() {
  # shellcheck disable=SC2086 # "IP PORT"
  pass_run "$1" ${pass_addr[$1]} "${pid_of[$1]}"
}
rounds pass_one direct isthmus haproxy

log "sidecar under load"
taskset -c 1 wrk -t1 -c64 -d"${DUR}s" "http://$SIDE:18000/" >"$work/sidecar-wrk.out" &
wrkpid=$!
peak=0
while kill -0 "$wrkpid" 2>/dev/null; do
  r="$(rss_kb "$pid_sidecar")"
  ((r > peak)) && peak=$r
  sleep 0.5
done
wait "$wrkpid" || true
put sidecar.rss_load_kb "$peak"
put sidecar.rps "$(awk '/^Requests\/sec/ {print $2}' "$work/sidecar-wrk.out")"

log "TLS termination: HTTP/1.1 max throughput (wrk)"
tls_max() { wrk_run "tls.$1" "${tls_url[$1]}" "${pid_of[$1]}"; }
rounds tls_max isthmus haproxy nginx
log "TLS termination: HTTP/2 max throughput (h2load -c64 -m10)"
h2_max() { h2_run "h2.$1" "${tls_url[$1]}" "${pid_of[$1]}"; }
rounds h2_max isthmus haproxy nginx
log "TLS termination: fixed rate, HTTP/1.1 and HTTP/2 (hey)"
tls_rate() {
  hey_run "tls.$1" "${tls_url[$1]}" -host bench.test
  hey_run "h2.$1" "${tls_url[$1]}" -h2 -host bench.test
}
rounds tls_rate isthmus haproxy nginx

load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

if [[ -n "${PERF_OUT:-}" ]]; then
  # Optional: where the Isthmus ingress spends CPU 0 under HTTP/1.1 load
  # (flat profile by symbol; needs `perf`, Debian's linux-perf).
  log "profiling the Isthmus ingress under wrk (${DUR}s) into $PERF_OUT"
  taskset -c 1 wrk -t1 -c64 -d"$((DUR + 2))s" "http://$ING:8080/" >/dev/null &
  wrkpid=$!
  sleep 1
  perf record -F 1999 -o "$work/perf.data" -p "$pid_ingress" -- sleep "$DUR" 2>/dev/null
  wait "$wrkpid" || true
  perf report -i "$work/perf.data" --stdio --no-children --sort dso,symbol 2>/dev/null |
    awk '!/^#/ && NF && n++ < 120' >"$PERF_OUT" || true
fi
echo "raw results:" >&2
cat "$R" >&2

# ---------------------------------------------------------------- the doc
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
int() { awk -v a="$1" 'BEGIN { printf "%.0f", a }'; }
# verdict CONDITION(awk expression): met / missed
verdict() { if awk "BEGIN { exit !($1) }"; then echo met; else echo "**missed**"; fi; }
g() { get "$1"; }
# lo/hi KEY: the smallest and largest of a key's values.
lo() { awk -F= -v k="$1" '$1 == k {print $2}' "$R" | sort -g | head -n1; }
hi() { awk -F= -v k="$1" '$1 == k {print $2}' "$R" | sort -g | tail -n1; }

cpus="$(nproc)"
model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)"
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
hap_ver="$(haproxy -v | awk 'NR == 1 {print $3}')"
ngx_ver="$(nginx -v 2>&1 | awk -F/ 'NR == 1 {print $2}')"

for k in "" tls.; do
  for p in isthmus haproxy nginx; do
    for q in p50 p99; do
      put "${k}${p}.add_${q}" "$(added "$(g "${k}${p}.$q")" "$(g "direct.$q")")"
    done
  done
done

# One table row: LABEL then the isthmus/haproxy/nginx values of KEY (with
# the prefix) and the two ratios.
row() {
  local label="$1" pre="$2" key="$3" fmt="${4:-%s}" i h n
  i="$(g "${pre}isthmus.$key")" h="$(g "${pre}haproxy.$key")" n="$(g "${pre}nginx.$key")"
  printf "| %s | $fmt | $fmt | $fmt | %s | %s |\n" "$label" "$i" "$h" "$n" "$(ratio "$i" "$h")" "$(ratio "$i" "$n")"
}
head_row() {
  echo "| | Isthmus | HAProxy | nginx | Isthmus / HAProxy | Isthmus / nginx |"
  echo "|---|---|---|---|---|---|"
}

section="$work/section.md"
{
  echo "<!-- proxies-bench:start -->"
  echo "## Gateway data plane vs HAProxy and nginx (issues 6 and 7)"
  echo
  echo "Run \`gateway/bench/proxies.sh\` (about 20 minutes plus the release builds; it"
  echo "installs haproxy, nginx, wrk, hey and nghttp2-client from Debian when"
  echo "missing); it rewrites this section."
  echo
  echo "**Setup**, all on loopback. The backend is nginx (1 worker) serving a"
  echo "100-byte static file over HTTP and a ${BIG_MB} MiB file over TLS: a fast,"
  echo "well-understood server. Each proxy is pinned to CPU 0 with one worker:"
  echo "Isthmus is \`isthmus-gateway --role ingress\` (the proxy-only binary as the image ships it:"
  echo "\`proxy\` profile with fat LTO, profile-guided optimisation, mimalloc, statically linked) with one worker (\`TOKIO_WORKER_THREADS=1\`, which runs tokio's"
  echo "single-threaded scheduler on the main thread), configured over xDS by a real"
  echo "\`isthmus control\` from Istio YAML (a Gateway with HTTP, HTTPS SIMPLE and TLS"
  echo "PASSTHROUGH servers, VirtualServices, one ServiceEntry per backend port, the"
  echo "certificate from a \`credentialName\` Secret); HAProxy ${hap_ver} with"
  echo "\`nbthread 1\` and \`http-reuse always\`; nginx ${ngx_ver} with"
  echo "\`worker_processes 1\` and an upstream \`keepalive 128\`. Keep-alive on both legs,"
  echo "access logs off everywhere, the same ECDSA P-256 certificate on every TLS"
  echo "listener, HTTP/1.1 to the backend. The backend and every client (wrk, hey,"
  echo "h2load, curl) run on CPU 1, as does the control plane (idle once it has"
  echo "pushed the configuration). The sidecar is a real \`isthmus-gateway --role"
  echo "sidecar\` (certificate from the control plane's CA, PERMISSIVE inbound)."
  echo
  echo "**Machine**: ${cpus} vCPU (${model:-unknown CPU}). Tree at commit ${rev}, run"
  echo "started ${started}; load average (1/5/15 min) ${load_before} before,"
  echo "${load_after} after. ${DUR} s per measurement after a ${WARM} s warm-up, one"
  echo "proxy at a time, back to back; every throughput and fixed-rate figure is the"
  echo "median of ${ROUNDS} rounds with the proxies interleaved, in an order rotated each round (single"
  echo "runs on this shared machine moved by up to 15%)."
  if [[ -n "${NOTE:-}" ]]; then echo "${NOTE}"; fi
  echo
  echo "### HTTP/1.1, plaintext (issue 6)"
  echo
  echo "Maximum throughput: wrk, 1 thread, 64 keep-alive connections, \`GET /\`"
  echo "(direct to the backend: $(int "$(g direct.rps)") req/s). CPU is the proxy's"
  echo "user+system time from \`/proc/PID/stat\` over the run (nginx: master and"
  echo "worker), per 1,000 requests; \"CPU 0 busy\" is that time over the run's length."
  echo "Latency: \`hey -q 62 -c 16 -z ${DUR}s\` (about 1,000 req/s), milliseconds added"
  echo "to the direct connection's (direct p50 $(g direct.p50) ms, p99 $(g direct.p99) ms)."
  echo
  head_row
  row "req/s" "" rps "%.0f"
  row "proxy CPU ms / 1,000 req" "" cpu_ms_per_1k
  row "CPU 0 busy (%)" "" cpu_pct
  row "p50 added (ms)" "" add_p50
  row "p99 added (ms)" "" add_p99
  echo
  echo "### TLS passthrough and memory (issue 6)"
  echo
  echo "One download of the ${BIG_MB} MiB file with curl over TLS per round, the"
  echo "median of $ROUNDS rounds (the backend terminates TLS; the proxy routes on SNI"
  echo "and relays bytes): Isthmus's TLS PASSTHROUGH server, HAProxy \`mode tcp\`,"
  echo "and direct. \"CPU 0 busy\" is the proxy's CPU time over the download's length,"
  echo "\"CPU 1 busy\" that core's non-idle time (/proc/stat, kernel work included)."
  echo "Isthmus copies (64 KiB buffer) rather than splices here: both peers are on"
  echo "loopback, where splice(2) was slower for the receiving client"
  echo "(\`gateway/src/proxy/splice.rs\`), and caps the unsent bytes it queues per"
  echo "socket at 16 KiB (\`TCP_NOTSENT_LOWAT\`, \`gateway/src/proxy/socket.rs\`)."
  echo
  echo "| | direct | Isthmus | HAProxy | Isthmus / direct | Isthmus / HAProxy |"
  echo "|---|---|---|---|---|---|"
  printf '| MB/s | %s | %s | %s | %s | %s |\n' "$(g direct.mbps)" "$(g isthmus.mbps)" "$(g haproxy.mbps)" \
    "$(ratio "$(g isthmus.mbps)" "$(g direct.mbps)")" "$(ratio "$(g isthmus.mbps)" "$(g haproxy.mbps)")"
  printf '| CPU 0 busy, the proxy (%%) | | %s | %s | | %s |\n' "$(g isthmus.pass_cpu_pct)" "$(g haproxy.pass_cpu_pct)" \
    "$(ratio "$(g isthmus.pass_cpu_pct)" "$(g haproxy.pass_cpu_pct)")"
  printf '| CPU 1 busy, client and backend (%%) | %s | %s | %s | | |\n' "$(g direct.cpu1_pct)" \
    "$(g isthmus.cpu1_pct)" "$(g haproxy.cpu1_pct)"
  echo
  echo "Resident memory (VmRSS): the sidecar idle (connected to the control plane,"
  echo "certificate issued, listeners up, 2 s after it answers) $(mib "$(g sidecar.rss_idle_kb)") MiB,"
  echo "the median of $IDLE_STARTS starts ($(mib "$(lo sidecar.rss_idle_kb)")–$(mib "$(hi sidecar.rss_idle_kb)") MiB); under load (wrk -c64"
  echo "through its inbound listener, $(int "$(g sidecar.rps)") req/s, peak of samples every 0.5 s)"
  echo "$(mib "$(g sidecar.rss_load_kb)") MiB. The ingress gateway: $(mib "$(g ingress.rss_idle_kb)") MiB idle,"
  echo "$(mib "$(g ingress.rss_load_kb)") MiB right after its HTTP/1.1 throughput run."
  echo
  echo "### TLS termination, HTTP/1.1 and HTTP/2 (issue 7)"
  echo
  echo "The same proxies terminating TLS (TLS 1.3, ALPN h2 and http/1.1) in front of"
  echo "the same plaintext backend. Maximum throughput: wrk (64 connections) for"
  echo "HTTP/1.1, \`h2load -c 64 -m 10\` for HTTP/2. Fixed rate: \`hey -q 62 -c 16\`"
  echo "(\`-h2\` for HTTP/2), total latency in ms (TLS handshakes happen once per"
  echo "connection, in the warm-up). hey runs with \`-host bench.test\` against every"
  echo "proxy: Go's client otherwise sends \`IP:port\` as the SNI, which rustls"
  echo "(Isthmus) refuses as an invalid name while HAProxy and nginx ignore it."
  echo
  head_row
  row "HTTP/1.1 req/s" tls. rps "%.0f"
  row "HTTP/1.1 CPU ms / 1,000 req" tls. cpu_ms_per_1k
  row "HTTP/1.1 CPU 0 busy (%)" tls. cpu_pct
  row "HTTP/2 req/s" h2. rps "%.0f"
  row "HTTP/2 CPU ms / 1,000 req" h2. cpu_ms_per_1k
  row "HTTP/2 CPU 0 busy (%)" h2. cpu_pct
  row "HTTP/1.1 p50 (ms)" tls. p50
  row "HTTP/1.1 p99 (ms)" tls. p99
  row "HTTP/2 p50 (ms)" h2. p50
  row "HTTP/2 p99 (ms)" h2. p99
  echo
  echo "### Targets"
  echo
  echo "- HTTP/1.1 throughput at least HAProxy's: $(verdict "$(g isthmus.rps) >= $(g haproxy.rps)") ($(ratio "$(g isthmus.rps)" "$(g haproxy.rps)"))."
  echo "- p99 added latency no worse than HAProxy's: $(verdict "$(g isthmus.add_p99) <= $(g haproxy.add_p99)") ($(g isthmus.add_p99) vs $(g haproxy.add_p99) ms)."
  echo "- Passthrough at least 90% of direct: $(verdict "$(g isthmus.mbps) >= 0.9 * $(g direct.mbps)") ($(g isthmus.mbps) of $(g direct.mbps) MB/s, $(awk -v a="$(g isthmus.mbps)" -v b="$(g direct.mbps)" 'BEGIN { printf "%.3f", a / b }'))."
  echo "- Idle sidecar under 15 MB: $(verdict "$(g sidecar.rss_idle_kb) * 1024 < 15000000") ($(awk -v k="$(g sidecar.rss_idle_kb)" 'BEGIN { printf "%.1f", k * 1024 / 1e6 }') MB)."
  echo "- TLS termination throughput at least HAProxy's: HTTP/1.1 $(verdict "$(g tls.isthmus.rps) >= $(g tls.haproxy.rps)") ($(ratio "$(g tls.isthmus.rps)" "$(g tls.haproxy.rps)")), HTTP/2 $(verdict "$(g h2.isthmus.rps) >= $(g h2.haproxy.rps)") ($(ratio "$(g h2.isthmus.rps)" "$(g h2.haproxy.rps)"))."
  echo "- TLS termination p99 no worse than HAProxy's: HTTP/1.1 $(verdict "$(g tls.isthmus.p99) <= $(g tls.haproxy.p99)"), HTTP/2 $(verdict "$(g h2.isthmus.p99) <= $(g h2.haproxy.p99)")."
  echo
  echo "How to read it: with the client and the backend sharing CPU 1, a proxy"
  echo "whose CPU 0 is not close to 100% busy is not the bottleneck, and its req/s"
  echo "is bounded by CPU 1; the CPU per 1,000 requests is then the fairer"
  echo "comparison of proxy efficiency. Sub-millisecond latency differences at"
  echo "1,000 req/s are within run-to-run noise on a shared machine."
  echo "<!-- proxies-bench:end -->"
} >"$section"

if [[ "${NO_DOC:-0}" == 1 ]]; then
  cat "$section"
  exit 0
fi
if grep -q '<!-- proxies-bench:start -->' "$doc" && grep -q '<!-- proxies-bench:end -->' "$doc"; then
  awk -v sec="$section" '
    /<!-- proxies-bench:start -->/ { while ((getline line < sec) > 0) print line; skip = 1; next }
    /<!-- proxies-bench:end -->/ { skip = 0; next }
    !skip { print }
  ' "$doc" >"$doc.tmp"
  mv "$doc.tmp" "$doc"
else
  { echo; cat "$section"; } >>"$doc"
fi
echo "wrote the proxies-bench section of $doc" >&2
