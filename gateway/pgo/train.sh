#!/usr/bin/env bash
# The training run of the proxy's profile-guided build
# (`gateway/build-proxy.sh --pgo`):
#
#   gateway/pgo/train.sh ISTHMUS PROXY
#
# runs PROXY (an `isthmus-gateway` built with -Cprofile-generate) as an
# ingress gateway and as two sidecars of a one-cluster mesh, configured over
# xDS by ISTHMUS (`isthmus control`) from Istio YAML, in front of
# `isthmus workload echo`, and sends through them the traffic the proxy
# spends its time on in production: HTTP/1.1 and HTTP/2, plaintext and with
# TLS termination, request bodies, TLS passthrough by SNI, and sidecar to
# sidecar mTLS. The proxies then drain and exit, which writes their profiles
# where LLVM_PROFILE_FILE points. Everything listens on 127.0.77.0/24.
# Needs curl and openssl. About a minute.
set -euo pipefail
isthmus="${1:?usage: $0 ISTHMUS PROXY}"
proxy="${2:?usage: $0 ISTHMUS PROXY}"
: "${LLVM_PROFILE_FILE:?set LLVM_PROFILE_FILE (where the proxies write their profiles)}"

CTL=127.0.77.1 # control plane: xDS and CA
APP=127.0.77.2 # the echo application on 18000
ING=127.0.77.3 # ingress gateway: 8080 HTTP, 8443 HTTPS, 9443 TLS passthrough
SRV=127.0.77.4 # the application's sidecar (STRICT mTLS inbound on 18000)
CLI=127.0.77.5 # a client's sidecar, its outbound listeners on $OUT
OUT=127.0.77.6
SRV_OUT=127.0.77.7 # the application sidecar's outbound listeners (unused)

work="$(mktemp -d "${TMPDIR:-/tmp}/isthmus-pgo.XXXXXX")"
pids=()
proxies=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "[pgo-train $(date +%T)] $*" >&2; }
fail() {
  echo "pgo training: $*; logs:" >&2
  tail -n 20 "$work"/*.out >&2 || true
  exit 1
}

mkdir -p "$work/config" "$work/pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=train.test -addext "subjectAltName=DNS:train.test,DNS:pass.train.test" \
  -keyout "$work/pki/key.pem" -out "$work/pki/cert.pem" 2>/dev/null
"$isthmus" ca init --out "$work/pki/root" >/dev/null
"$isthmus" ca intermediate --root-dir "$work/pki/root" --cluster train --out "$work/ca" \
  --trust-domain cluster.local >/dev/null
printf 'pgo-training-server train/web-app\npgo-training-client train/client\n' >"$work/tokens"
echo pgo-training-server >"$work/srv-token"
echo pgo-training-client >"$work/cli-token"
b64() { base64 -w0 <"$1"; }
cat >"$work/config/mesh.yaml" <<EOF
apiVersion: isthmus.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: istio-system}
spec:
  clusterId: train
  network: net-train
  trustDomain: cluster.local
  locality: {region: r1, zone: z1}
  gateways:
    eastWest: $CTL:15443
    ingress: [$ING:8080]
  federation: {listen: $CTL:15031, peers: []}
EOF
cat >"$work/config/train.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: train-cred, namespace: istio-system}
type: kubernetes.io/tls
data:
  tls.crt: $(b64 "$work/pki/cert.pem")
  tls.key: $(b64 "$work/pki/key.pem")
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: train, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: train-cred}
  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: [pass.train.test]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: istio-system}
spec:
  hosts: [echo.train.internal]
  ports: [{number: 18000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: $APP}]
---
# Passthrough leads back to the ingress's own HTTPS server, which then
# terminates TLS: no second backend is needed.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: https-self, namespace: istio-system}
spec:
  hosts: [https.train.internal]
  ports: [{number: 8443, name: tls, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: $ING}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [train]
  http:
  - match: [{uri: {prefix: /api/}, headers: {x-train: {exact: "1"}}}]
    rewrite: {uri: /v1/}
    headers:
      request: {set: {x-route: api}}
      response: {remove: [x-internal]}
    route:
    - destination: {host: echo.train.internal, port: {number: 18000}}
    retries: {attempts: 2, retryOn: 5xx}
  - route:
    - destination: {host: echo.train.internal, port: {number: 18000}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pass, namespace: istio-system}
spec:
  hosts: [pass.train.test]
  gateways: [train]
  tls:
  - match: [{port: 9443, sniHosts: [pass.train.test]}]
    route:
    - destination: {host: https.train.internal, port: {number: 8443}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: train}
spec:
  mtls: {mode: STRICT}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web-app, namespace: train}
spec:
  hosts: [web-app.train.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 18000, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: web-app}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-app, namespace: train}
spec:
  selector: {matchLabels: {app: web-app}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/train/sa/client]}}]
    to: [{operation: {methods: [GET, POST]}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web-app-1, namespace: train}
spec:
  address: $SRV
  labels: {app: web-app}
  serviceAccount: web-app
EOF

start() { # NAME CMD...: in the background, output in $work/NAME.out
  local name="$1"
  shift
  "$@" >"$work/$name.out" 2>&1 &
  pids+=($!)
}
alive() { # PID: running (an exited child stays a zombie until waited for)
  local s
  s="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null)" && [[ "${s:0:1}" != Z ]]
}
wait_ok() { # URL [curl args]: until it answers 200 (deadline 60 s)
  local url="$1" deadline=$((SECONDS + 60))
  shift
  until [[ "$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" || true)" == 200 ]]; do
    ((SECONDS < deadline)) || fail "no 200 from $url within 60 s"
    for p in "${pids[@]}"; do alive "$p" || fail "process $p exited"; done
    sleep 0.2
  done
}
proxy_start() { # NAME ARGS...: an instrumented proxy
  local name="$1"
  shift
  start "$name" "$proxy" --log warn --drain-time 1s "$@"
  proxies+=("${pids[-1]}")
}

log "starting the control plane, the echo application and three proxies"
start control "$isthmus" --log warn control --config-dir "$work/config" --ca-dir "$work/ca" \
  --data-dir "$work/data" --grpc-addr "$CTL:15012" --plaintext-xds-addr "$CTL:15010" \
  --admin-addr "$CTL:15014" --bootstrap-tokens "$work/tokens"
start echo "$isthmus" --log warn workload echo --listen "$APP:18000" --service web-app --cluster train
wait_ok "http://$CTL:15014/readyz"
proxy_start ingress --role ingress --xds "http://$CTL:15010" --ip "$ING" \
  --pod isthmus-ingressgateway --namespace istio-system \
  --service-account isthmus-ingressgateway --cluster-id train --label istio=ingressgateway \
  --admin "$ING:15000"
sidecar=(--role sidecar --xds "https://$CTL:15012" --ca "$CTL:15012"
  --root-cert "$work/pki/root/root-cert.pem" --namespace train --cluster-id train)
proxy_start server "${sidecar[@]}" --token-file "$work/srv-token" --ip "$SRV" --pod web-app-1 \
  --service-account web-app --label app=web-app --admin "$SRV:15000" --app-address "$APP" \
  --outbound-bind "$SRV_OUT"
proxy_start client "${sidecar[@]}" --token-file "$work/cli-token" --ip "$CLI" --pod client-1 \
  --service-account client --label app=client --admin "$CLI:15000" --outbound-bind "$OUT"

mesh=(-H "Host: web-app.train.svc.cluster.local")
wait_ok "http://$ING:8080/"
wait_ok "https://$ING:8443/"
wait_ok "https://pass.train.test:9443/" --resolve "pass.train.test:9443:$ING"
wait_ok "http://$OUT:18000/" "${mesh[@]}"

# load NAME N [curl args] URL: N requests over up to 16 connections (curl
# numbers the URL's [1-N] and reuses connections); every one must succeed.
load() {
  local name="$1" n="$2"
  shift 2
  local args=("${@:1:$#-1}") url="${*: -1}"
  log "$name: $n requests"
  curl -sSk --no-progress-meter --fail --parallel --parallel-max 16 "${args[@]}" "$url?i=[1-$n]" >/dev/null ||
    fail "$name: a request failed"
}
head -c 65536 /dev/zero | tr '\0' x >"$work/body"
load "HTTP/1.1" 20000 "http://$ING:8080/hello"
load "HTTP/1.1 routed" 5000 -H "x-train: 1" "http://$ING:8080/api/items"
load "HTTP/1.1 POST 64 KiB" 2000 --data-binary "@$work/body" "http://$ING:8080/upload"
load "HTTPS HTTP/1.1" 10000 --http1.1 "https://$ING:8443/hello"
load "HTTPS HTTP/2" 20000 --http2 "https://$ING:8443/hello"
load "HTTPS HTTP/2 POST 64 KiB" 2000 --http2 --data-binary "@$work/body" "https://$ING:8443/upload"
load "TLS passthrough" 5000 --resolve "pass.train.test:9443:$ING" "https://pass.train.test:9443/hello"
load "sidecar mTLS" 20000 "${mesh[@]}" "http://$OUT:18000/hello"
load "sidecar mTLS POST 64 KiB" 2000 "${mesh[@]}" --data-binary "@$work/body" "http://$OUT:18000/upload"

log "draining the proxies (their profiles are written on exit)"
kill -TERM "${proxies[@]}"
(sleep 30 && kill -KILL "${proxies[@]}" 2>/dev/null) &
watchdog=$!
for p in "${proxies[@]}"; do
  wait "$p" || fail "proxy $p exited with status $? after SIGTERM (killed after 30 s if it hung)"
done
kill "$watchdog" 2>/dev/null || true
log "done"
