#!/usr/bin/env python3
"""gRPC's own xDS client (grpcio) as an independent peer of the Isthmus
control plane.

  server ADDR NAME      serve /isthmus.Echo/Say, answering NAME, until killed;
                        prints "serving NAME on port PORT" once bound (ADDR may use port 0)
  client TARGET COUNT [HOLD]
                        call TARGET (e.g. xds:///reviews.default.svc.cluster.local:9080)
                        COUNT times; print one JSON line {"ok": n, "answers": {...}, "errors": [...]},
                        then keep the channel (and its xDS stream) open HOLD seconds

The client reads its bootstrap from GRPC_XDS_BOOTSTRAP_CONFIG, which the
Rust test sets. No generated stubs: requests and answers are raw bytes.
"""
import json
import sys
import time
from concurrent import futures

import grpc

METHOD = "/isthmus.Echo/Say"


def serve(addr, name):
    def say(request, context):
        return name.encode()

    handler = grpc.method_handlers_generic_handler(
        "isthmus.Echo",
        {"Say": grpc.unary_unary_rpc_method_handler(say)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(addr)
    if port == 0:
        print(f"cannot bind {addr}", file=sys.stderr)
        sys.exit(2)
    server.start()
    print(f"serving {name} on port {port}", flush=True)
    server.wait_for_termination()


def client(target, count, hold):
    answers, errors = {}, []
    # The first call waits for xDS resolution; a deadline keeps a broken
    # control plane from hanging the test forever.
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)
        for _ in range(count):
            try:
                reply = call(b"hi", timeout=15, wait_for_ready=True).decode()
                answers[reply] = answers.get(reply, 0) + 1
            except grpc.RpcError as e:
                errors.append(f"{e.code()}: {e.details()}")
                # Resolution failed or the endpoint is unreachable: later
                # calls would only wait out the same deadline again.
                break
        print(json.dumps({"ok": sum(answers.values()), "answers": answers, "errors": errors}), flush=True)
        # The xDS client lives as long as a channel uses it: holding the
        # channel lets the test inspect this client in the control plane.
        time.sleep(hold)
    sys.exit(0 if not errors else 1)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "server":
        serve(sys.argv[2], sys.argv[3])
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "client":
        client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) == 5 else 0)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
