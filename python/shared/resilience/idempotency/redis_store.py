"""``RedisIdempotencyStore``: idempotency shared by every host that reaches one Redis.

Each key is one Redis string ``<key_prefix><key>`` holding the record
(``_durable`` describes it) with the lease or the TTL as its Redis expiry
(``PX``): Redis deletes an expired record itself, and its clock is the only one
that counts.

* ``claim`` is one round trip: a Lua script returns what the key holds and its
  ``PTTL`` when it is taken, and otherwise takes it with ``SET key value NX PX
  lease``, in one atomic step (a replay only reads);
* ``complete``, ``fail``, ``release`` and ``extend`` are Lua scripts that
  compare the owner id stored in the record with the token's, in Redis, and
  act only when they match (one round trip each);
* ``get`` is one ``GET``, ``exists`` one ``GETRANGE`` of the state byte.

A replay is therefore one round trip and a first execution two (claim, then
complete). Scripts run with ``EVALSHA`` (loaded again after ``NOSCRIPT``).

Durability is Redis's: without AOF (``appendonly yes``, ``appendfsync
everysec`` or ``always``) a restart loses every claim and every completed
result since the last snapshot, and a key can then execute a second time.
A replica promoted after a failover can miss the last writes the same way.

Pass a ``redis.Redis`` for the sync methods, a ``redis.asyncio.Redis`` for the
``_async`` ones, or both (``client`` and ``async_client``). Without an asyncio
client the ``_async`` forms run the sync calls on the default executor. The
clients must not decode responses (results are bytes).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from shared.resilience.exceptions import IdempotencyStoreError
from shared.resilience.idempotency import _durable
from shared.resilience.idempotency._durable import COMPLETED, FAILED, IN_PROGRESS, OWNER_HEX
from shared.resilience.idempotency.codec import Codec
from shared.resilience.idempotency.outcomes import OutcomeCounting
from shared.resilience.idempotency.store import Claim, ClaimState, OwnerToken

__all__ = ["DEFAULT_KEY_PREFIX", "RedisIdempotencyStore"]

DEFAULT_KEY_PREFIX = "shared:idempotency:"

# A record: <state: 1 byte><owner: 32 hex><fingerprint length: 8 hex><fingerprint><value>.
_HEAD = 1 + OWNER_HEX + 8
_NO_OWNER = "-" * OWNER_HEX

# KEYS[1] the record; ARGV[1] the new in-progress record; ARGV[2] the lease in ms.
# Returns 1 when claimed, else {record, pttl}. The key is read first, so a replay
# (the common duplicate) only reads; a free key is taken with SET NX PX.
_CLAIM = """
local record = redis.call('GET', KEYS[1])
if record then return {record, redis.call('PTTL', KEYS[1])} end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
return 1
"""

# The owner check every owner-only script starts with: ARGV[1] is 'P' .. owner.
_OWNED = f"""
local record = redis.call('GET', KEYS[1])
if not record or string.sub(record, 1, {1 + OWNER_HEX}) ~= ARGV[1] then return 0 end
"""

# complete / fail: ARGV[2] the new state, ARGV[3] the value, ARGV[4] the TTL in ms.
# The fingerprint stays; the owner stays too, but the state no longer says "P".
_FINISH = (
    _OWNED
    + f"""
local head_end = {_HEAD} + tonumber(string.sub(record, {2 + OWNER_HEX}, {_HEAD}), 16)
redis.call('SET', KEYS[1], ARGV[2] .. string.sub(record, 2, head_end) .. ARGV[3], 'PX', ARGV[4])
return 1
"""
)

_RELEASE = _OWNED + "\nredis.call('DEL', KEYS[1])\nreturn 1\n"

# extend: ARGV[2] the new lease in ms, counted from now.
_EXTEND = _OWNED + "\nredis.call('PEXPIRE', KEYS[1], ARGV[2])\nreturn 1\n"


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _record(state: str, owner: str, fingerprint: str, value: bytes = b"") -> bytes:
    fp = fingerprint.encode("utf-8", "surrogatepass")
    return f"{state}{owner}{len(fp):08x}".encode() + fp + value


def _parse(record: bytes) -> tuple[str, str, bytes]:
    """state, fingerprint, value"""
    state = chr(record[0])
    fp_len = int(record[1 + OWNER_HEX : _HEAD], 16)
    fingerprint = record[_HEAD : _HEAD + fp_len].decode("utf-8", "surrogatepass")
    return state, fingerprint, record[_HEAD + fp_len :]


def _is_async_client(client: Any) -> bool:
    return inspect.iscoroutinefunction(getattr(client, "execute_command", None))


def _check_client(name: str, client: Any) -> None:
    if not hasattr(client, "register_script") or not hasattr(client, "execute_command"):
        raise TypeError(f"{name} must be a redis-py client, got {type(client).__name__}")
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {})
    if kwargs.get("decode_responses"):
        raise ValueError(f"{name} must not decode responses (decode_responses=False)")


class _RedisStore:
    """The Redis store's implementation (see ``RedisIdempotencyStore``)."""

    def __init__(
        self,
        client: Any = None,
        *,
        async_client: Any = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        codec: Codec | None = None,
        name: str | None = None,
    ) -> None:
        if client is not None and _is_async_client(client):
            if async_client is not None:
                raise TypeError("client is an asyncio client and async_client is given too")
            client, async_client = None, client
        if client is None and async_client is None:
            raise TypeError("give client (redis.Redis) or async_client (redis.asyncio.Redis)")
        if client is not None:
            _check_client("client", client)
        if async_client is not None:
            _check_client("async_client", async_client)
            if not _is_async_client(async_client):
                raise TypeError("async_client must be a redis.asyncio client")
        if not isinstance(key_prefix, str):
            raise TypeError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        if not key_prefix:
            raise ValueError("key_prefix must be a non-empty str (it keeps our keys apart)")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self.name = name or f"redis:{key_prefix}"
        self._prefix = key_prefix
        self._codec = _durable.check_codec(codec)
        self._client = client
        self._async_client = async_client
        self._scripts: dict[str, Any] = {}
        self._async_scripts: dict[str, Any] = {}
        sources = {"claim": _CLAIM, "finish": _FINISH, "release": _RELEASE, "extend": _EXTEND}
        for script, source in sources.items():
            if client is not None:
                self._scripts[script] = client.register_script(source)
            if async_client is not None:
                self._async_scripts[script] = async_client.register_script(source)

    def __repr__(self) -> str:
        return f"RedisIdempotencyStore(key_prefix={self._prefix!r})"

    def _sync(self) -> Any:
        if self._client is None:
            raise TypeError(
                "this RedisIdempotencyStore has only an asyncio client: use the _async "
                "methods, or pass client=redis.Redis(...) too"
            )
        return self._client

    # -- the pieces both forms share ------------------------------------------------------

    def _claim_args(self, key: str, fingerprint: str, lease: float) -> tuple[str, list[Any], str]:
        key = _durable.check_key(key)
        fingerprint = _durable.check_fingerprint(fingerprint)
        lease = _durable.check_seconds("lease", lease)
        owner = _durable.new_owner()
        return owner, [_record(IN_PROGRESS, owner, fingerprint), _ms(lease)], fingerprint

    def _claim_answer(self, key: str, fingerprint: str, owner: str, reply: Any) -> Claim:
        if reply == 1:
            return Claim(ClaimState.CLAIMED, token=OwnerToken(key, owner))
        record, pttl = reply
        if not isinstance(record, bytes) or len(record) < _HEAD:
            raise IdempotencyStoreError(key, f"the Redis key does not hold a record: {record!r}")
        state, stored_fingerprint, value = _parse(record)
        remaining = pttl / 1000 if pttl >= 0 else 0.0
        return _durable.existing_claim(
            self._codec, key, fingerprint, state, stored_fingerprint, value, remaining
        )

    def _finish_args(self, token: OwnerToken, state: str, value: bytes, ttl: float) -> list[Any]:
        return [IN_PROGRESS + token.owner, state, value, _ms(ttl)]

    def _get_answer(self, key: str, record: Any) -> Any:
        if record is None or len(record) < _HEAD or chr(record[0]) != COMPLETED:
            return None
        return _durable.unpack(self._codec, key, _parse(record)[2])

    # -- sync ----------------------------------------------------------------------------

    def _call(self, key: str, operation: str, executed: bool, function: Any, *args: Any) -> Any:
        from redis import RedisError

        try:
            return function(*args)
        except RedisError as exc:
            raise _durable.store_error(key, exc, operation, executed=executed) from None

    def claim(self, key: str, fingerprint: str, lease: float) -> Claim:
        owner, args, fingerprint = self._claim_args(key, fingerprint, lease)
        self._sync()
        script = self._scripts["claim"]
        keys = [self._prefix + key]
        reply = self._call(key, "claim", False, lambda: script(keys=keys, args=args))
        return self._claim_answer(key, fingerprint, owner, reply)

    def _owned(self, token: OwnerToken, script: str, args: list[Any], executed: bool) -> bool:
        self._sync()
        call = self._scripts[script]
        reply = self._call(
            token.key, script, executed, lambda: call(keys=[self._prefix + token.key], args=args)
        )
        return bool(reply == 1)

    def complete(self, token: OwnerToken, result: Any, ttl: float) -> bool:
        token = _durable.check_token(token)
        ttl = _durable.check_seconds("ttl", ttl)
        value = _durable.pack(self._codec, result)  # ResultNotStorableError before any write
        return self._owned(token, "finish", self._finish_args(token, COMPLETED, value, ttl), True)

    def fail(self, token: OwnerToken, error: str, ttl: float) -> bool:
        token = _durable.check_token(token)
        value = _durable.check_error(error).encode()
        ttl = _durable.check_seconds("ttl", ttl)
        return self._owned(token, "finish", self._finish_args(token, FAILED, value, ttl), True)

    def release(self, token: OwnerToken) -> bool:
        token = _durable.check_token(token)
        return self._owned(token, "release", [IN_PROGRESS + token.owner], False)

    def extend(self, token: OwnerToken, lease: float) -> bool:
        token = _durable.check_token(token)
        lease = _durable.check_seconds("lease", lease)
        return self._owned(token, "extend", [IN_PROGRESS + token.owner, _ms(lease)], False)

    def delete(self, key: str) -> bool:
        key = _durable.check_key(key)
        client = self._sync()
        return bool(self._call(key, "delete", False, client.delete, self._prefix + key) == 1)

    def get(self, key: str) -> Any:
        key = _durable.check_key(key)
        record = self._call(key, "get", False, self._sync().get, self._prefix + key)
        return self._get_answer(key, record)

    def set(self, key: str, value: Any, ttl: float) -> None:
        key = _durable.check_key(key)
        ttl = _durable.check_seconds("ttl", ttl)
        record = _record(COMPLETED, _NO_OWNER, "", _durable.pack(self._codec, value))
        client = self._sync()
        self._call(key, "set", True, lambda: client.set(self._prefix + key, record, px=_ms(ttl)))

    def exists(self, key: str) -> bool:
        key = _durable.check_key(key)
        head = self._call(key, "exists", False, self._sync().getrange, self._prefix + key, 0, 0)
        return bool(head == COMPLETED.encode())

    # -- asyncio -------------------------------------------------------------------------

    async def _acall(self, key: str, operation: str, executed: bool, awaitable: Any) -> Any:
        from redis import RedisError

        try:
            return await awaitable
        except RedisError as exc:
            raise _durable.store_error(key, exc, operation, executed=executed) from None

    async def claim_async(self, key: str, fingerprint: str, lease: float) -> Claim:
        if self._async_client is None:
            return await _durable.claim_in_thread(self, key, fingerprint, lease)
        owner, args, fingerprint = self._claim_args(key, fingerprint, lease)
        script = self._async_scripts["claim"]

        async def claim() -> Claim:
            keys = [self._prefix + key]
            reply = await self._acall(key, "claim", False, script(keys=keys, args=args))
            return self._claim_answer(key, fingerprint, owner, reply)

        return await _durable.shielded_claim(self, claim())

    async def _owned_async(
        self, token: OwnerToken, script: str, args: list[Any], executed: bool
    ) -> bool:
        call = self._async_scripts[script]
        reply = await self._acall(
            token.key, script, executed, call(keys=[self._prefix + token.key], args=args)
        )
        return bool(reply == 1)

    async def complete_async(self, token: OwnerToken, result: Any, ttl: float) -> bool:
        if self._async_client is None:
            return await _durable.in_thread(self.complete, token, result, ttl)
        token = _durable.check_token(token)
        ttl = _durable.check_seconds("ttl", ttl)
        value = _durable.pack(self._codec, result)
        args = self._finish_args(token, COMPLETED, value, ttl)
        return await self._owned_async(token, "finish", args, True)

    async def fail_async(self, token: OwnerToken, error: str, ttl: float) -> bool:
        if self._async_client is None:
            return await _durable.in_thread(self.fail, token, error, ttl)
        token = _durable.check_token(token)
        value = _durable.check_error(error).encode()
        ttl = _durable.check_seconds("ttl", ttl)
        args = self._finish_args(token, FAILED, value, ttl)
        return await self._owned_async(token, "finish", args, True)

    async def release_async(self, token: OwnerToken) -> bool:
        if self._async_client is None:
            return await _durable.in_thread(self.release, token)
        token = _durable.check_token(token)
        return await self._owned_async(token, "release", [IN_PROGRESS + token.owner], False)

    async def extend_async(self, token: OwnerToken, lease: float) -> bool:
        if self._async_client is None:
            return await _durable.in_thread(self.extend, token, lease)
        token = _durable.check_token(token)
        lease = _durable.check_seconds("lease", lease)
        args = [IN_PROGRESS + token.owner, _ms(lease)]
        return await self._owned_async(token, "extend", args, False)

    async def delete_async(self, key: str) -> bool:
        if self._async_client is None:
            return await _durable.in_thread(self.delete, key)
        key = _durable.check_key(key)
        reply = await self._acall(
            key, "delete", False, self._async_client.delete(self._prefix + key)
        )
        return bool(reply == 1)

    async def get_async(self, key: str) -> Any:
        if self._async_client is None:
            return await _durable.in_thread(self.get, key)
        key = _durable.check_key(key)
        record = await self._acall(key, "get", False, self._async_client.get(self._prefix + key))
        return self._get_answer(key, record)

    async def set_async(self, key: str, value: Any, ttl: float) -> None:
        if self._async_client is None:
            return await _durable.in_thread(self.set, key, value, ttl)
        key = _durable.check_key(key)
        ttl = _durable.check_seconds("ttl", ttl)
        record = _record(COMPLETED, _NO_OWNER, "", _durable.pack(self._codec, value))
        await self._acall(
            key, "set", True, self._async_client.set(self._prefix + key, record, px=_ms(ttl))
        )
        return None

    async def exists_async(self, key: str) -> bool:
        if self._async_client is None:
            return await _durable.in_thread(self.exists, key)
        key = _durable.check_key(key)
        head = await self._acall(
            key, "exists", False, self._async_client.getrange(self._prefix + key, 0, 0)
        )
        return bool(head == COMPLETED.encode())


# OutcomeCounting: @idempotent counts each call's outcome on the store it used.
class RedisIdempotencyStore(OutcomeCounting, _RedisStore):
    """An idempotency store in Redis (``SET NX PX`` claims, owner-checked Lua).

    Args:
        client: a ``redis.Redis`` (or a ``redis.asyncio.Redis``, taken as
            ``async_client``), as in the design document's example.
        async_client: a ``redis.asyncio.Redis`` for the ``_async`` methods.
        key_prefix: prepended to every key (non-empty; default
            ``"shared:idempotency:"``).
        codec: how results are stored (default ``JsonCodec()``).
        name: the store's name in metrics (default ``redis:<key_prefix>``).
    """

    @property
    def has_async_client(self) -> bool:
        """Whether the ``_async`` methods use an asyncio client (not a thread)."""
        return self._async_client is not None
