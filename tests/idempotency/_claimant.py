"""A process that claims one key of a durable store (the race and crash tests run it).

``python _claimant.py '<json>'`` with ``stores`` (a list of ``[kind, target]``: kind
sqlite | redis | postgres, target a file, a key prefix or a table), ``key``, ``lease``,
``go`` (a file to wait for, so that every process claims at the same moment),
``effects`` (a directory where the winner on each store appends one line to
``<kind>``: the side effect, counted by the test) and ``hold`` (a winner prints its
owner id and the process sleeps instead of completing, to be killed).
Prints ``ready``, then one JSON line per store: its claim's state, and the owner
or the result. One process serves every store, and ``processes`` > 1 forks that
many claimants after the imports (this process has no threads to fork with), so
a race of 8 costs one interpreter start, not 8 per store.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

POSTGRES_CONNINFO = os.environ.get(
    "SHARED_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)


def make_store(kind: str, target: str) -> Any:
    if kind == "sqlite":
        from shared.resilience.idempotency.sqlite_store import SQLiteIdempotencyStore

        return SQLiteIdempotencyStore(target)
    if kind == "redis":
        import redis

        from shared.resilience.idempotency.redis_store import RedisIdempotencyStore

        return RedisIdempotencyStore(redis.Redis(host="127.0.0.1", port=6379), key_prefix=target)
    from shared.resilience.idempotency.postgres_store import PostgresIdempotencyStore

    return PostgresIdempotencyStore(POSTGRES_CONNINFO, table=target, min_size=1, max_size=1)


def say(message: dict[str, Any]) -> None:
    """One line in one write(2): forked claimants share the pipe, and a write of
    less than PIPE_BUF bytes is never interleaved with another."""
    os.write(1, (json.dumps(message) + "\n").encode())


def claimant(args: dict[str, Any]) -> None:
    stores = [(kind, make_store(kind, target)) for kind, target in args["stores"]]
    say({"state": "ready"})
    deadline = time.monotonic() + 20
    while not os.path.exists(args["go"]):
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.001)
    hold = False
    for kind, store in stores:
        claim = store.claim(args["key"], "fingerprint", args["lease"])
        if claim.token is None:
            answer = {"kind": kind, "state": claim.state.value, "result": claim.result}
            say(answer)
            continue
        fd = os.open(os.path.join(args["effects"], kind), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        if args.get("hold"):
            hold = True
            answer = {"kind": kind, "state": "claimed", "owner": claim.token.owner}
        else:
            assert store.complete(claim.token, {"by": os.getpid()}, 60)
            answer = {"kind": kind, "state": "claimed", "result": {"by": os.getpid()}}
        say(answer)
    if hold:
        time.sleep(60)


def main() -> None:
    args = json.loads(sys.argv[1])
    processes = args.get("processes", 1)
    if processes == 1:
        claimant(args)
        return
    for kind, _ in args["stores"]:  # import once, before forking
        if kind == "redis":
            import redis  # noqa: F401
        elif kind == "postgres":
            import psycopg_pool  # noqa: F401
    import shared.resilience.idempotency.postgres_store
    import shared.resilience.idempotency.redis_store
    import shared.resilience.idempotency.sqlite_store  # noqa: F401

    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                claimant(args)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        children.append(pid)
    codes = [os.waitpid(pid, 0)[1] for pid in children]
    raise SystemExit(1 if any(codes) else 0)


if __name__ == "__main__":
    main()
