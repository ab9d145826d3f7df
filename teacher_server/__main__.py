"""``python -m twofold.teacher_server --model DIR | --tiny [--host H] [--port P] ...``: serve a teacher over HTTP."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m twofold.teacher_server",
        description="Serve a causal LM over the OpenAI HTTP protocol.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="DIR", help="local Hugging Face checkpoint directory")
    source.add_argument("--tiny", action="store_true", help="serve a freshly initialised tiny-teacher")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = any free port; default 8000)")
    parser.add_argument(
        "--served-model-name", help="model id clients use (default: tiny-teacher or DIR's name)"
    )
    parser.add_argument("--max-batch-size", type=int, default=256, help="rows per generation batch")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed for --tiny")
    args = parser.parse_args(argv)

    from twofold.teacher_server.app import launch  # torch is imported only after the arguments are valid

    try:
        launch(
            model_dir=args.model,
            tiny=args.tiny,
            host=args.host,
            port=args.port,
            served_model_name=args.served_model_name,
            max_batch_size=args.max_batch_size,
            threads=args.threads,
            device=args.device,
            dtype=args.dtype,
            seed=args.seed,
        )
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
