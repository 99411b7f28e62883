"""edgeq device: start, stop and inspect an emulated device: arm64 serves TVM RPC; armv7 and
hexagon-sim run edgeq's kernel harness (prepared here, nothing left running)."""

from __future__ import annotations

import json
import time


def register(sub) -> None:
    from edgeq.commands._args import port

    p = sub.add_parser("device", help="an emulated device (qemu-user: arm64 over TVM RPC, armv7 and hexagon-sim "
                                      "through edgeq's kernel harness) on this machine")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = dsub.add_parser("start", help="prepare (first use) and start the device's RPC server")
    start.add_argument("name", nargs="?", default="arm64", help="arm64, armv7 or hexagon-sim (default: %(default)s)")
    start.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    start.add_argument("--port", type=port, default=None, help="first port to try (default: 9190)")
    start.add_argument("--key", default="", help="device key (for a tracker)")
    start.add_argument("--tracker", default=None, help="register with this RPC tracker, host:port")
    start.add_argument("--allow-remote", action="store_true",
                       help="allow --host other than 127.0.0.1 (TVM RPC has no authentication)")
    start.add_argument("--json", action="store_true", help="print the state as JSON")
    stop = dsub.add_parser("stop", help="stop the device's RPC server")
    stop.add_argument("name", nargs="?", default="arm64")
    status = dsub.add_parser("status", help="is the device running, and where")
    status.add_argument("name", nargs="?", default="arm64")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import asdict

    from edgeq.runtime import device

    if args.action == "start":
        begin = time.perf_counter()
        state = device.start_device(args.name, host=args.host, port=args.port or device.DEFAULT_PORT,
                                    key=args.key, tracker=args.tracker, allow_remote=args.allow_remote)
        if args.json:
            print(json.dumps({**asdict(state), "url": state.url}))
        elif state.runs == "harness":
            print(f"{state.name} device ready: --device {state.url} runs artifacts through edgeq's kernel harness "
                  f"({time.perf_counter() - begin:.1f} s)")
        else:
            print(f"{state.name} device running at {state.url} (pid {state.pid}, {time.perf_counter() - begin:.1f} s)")
        return 0
    if args.action == "stop":
        print(f"{args.name} device stopped" if device.stop_device(args.name) else f"{args.name} device was not running")
        return 0
    state = device.device_status(args.name)
    if args.json:
        print(json.dumps({**asdict(state), "url": state.url, "running": True} if state else {"name": args.name, "running": False}))
    elif state and state.runs == "harness":
        print(f"{state.name} device ready (kernel harness; --device {state.url})")
    elif state:
        print(f"{state.name} device running at {state.url} (pid {state.pid}, key {state.key or '-'}, tracker {state.tracker or '-'})")
    else:
        print(f"{args.name} device not running")
    return 0 if state else 1
