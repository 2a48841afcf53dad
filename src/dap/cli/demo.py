"""`dap demo`: the browser demo (see dap.demo), served on this machine."""

from __future__ import annotations

import argparse
import socket
import sys

from dap.cli import parse_device, parse_network_size, port_number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "--checkpoint", dest="model", default=None,
                        help="a model name (`dap models`), an official model.pth, a folder written by `dap convert`/"
                             "`dap train`, or hf:<repo>, as for `dap predict`. Default: dap-tiny-synth, the small "
                             "model bundled with the package (synthetic data only); for the paper's model pass "
                             "--model dap-vitl")
    parser.add_argument("--resolution", type=parse_network_size, default=None,
                        help="working resolution HxW, 2:1, multiples of 16 (default: the model's own; the bundled "
                             "model is much less accurate at any other than its 256x512)")
    parser.add_argument("--device", type=parse_device, default=None,
                        help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on; 0.0.0.0 makes the demo reachable from other machines")
    parser.add_argument("--port", type=port_number, default=7860, help="port to serve on")
    parser.add_argument("--share", action="store_true",
                        help="also publish the demo through a temporary public gradio.live link (the page and your "
                             "uploads then pass through gradio's servers)")


def run(args: argparse.Namespace) -> int:
    from dap.demo import build_app, import_gradio
    from dap.inference import model_precision, other_resolution_note, prepare_model, resolve_model, select_device

    import_gradio()  # before loading (maybe downloading) the model
    device = select_device(args.device)
    model = resolve_model(args.model, device)
    if note := other_resolution_note(args.resolution, model):
        print(f"dap demo: note: {note}", file=sys.stderr)
    # as `dap predict`: once, for every upload (16-bit weights where "auto" computes in 16 bit, e.g. on CUDA)
    model = prepare_model(model, model_precision(model, "auto", device), in_place=True)
    app = build_app(model, resolution=args.resolution, device=device, model_name=args.model or "dap-tiny-synth")
    from dap.errors import DapError

    try:  # a host name that does not resolve: gradio would report it as a taken port
        socket.getaddrinfo(args.host, args.port)
    except (socket.gaierror, UnicodeError) as e:
        raise DapError(f"cannot resolve --host {args.host!r} ({e}); give an address of this machine, e.g. 127.0.0.1 "
                       "or 0.0.0.0") from None
    try:
        app.launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=True)
    except OSError as e:  # gradio words both as "Cannot find empty port", with advice for its own API
        raise DapError(f"cannot serve on {args.host}:{args.port}: the port is in use, or the address is not one of "
                       "this machine's; pick another --port or --host") from e
    print(f"dap demo: serving on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    try:
        app.block_thread()
    finally:  # also when stopped by SIGTERM (kill, docker stop): the server's shutdown deletes its cached uploads
        app.close(verbose=False)
    return 0
