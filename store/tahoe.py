"""`tahoe://HOST:PORT`: a Tahoe-LAFS grid through a client node's web API.

Immutable objects are `PUT /uri` (the returned capability is the ref; small objects come back as
literal `URI:LIT:` caps that hold their bytes). Ranged reads are `GET /uri/$CAP` with a `Range`
header. The root pointer is one mutable MDMF file: created with `PUT /uri?format=MDMF`, replaced
with `PUT /uri/$WRITECAP`, which Tahoe publishes as a whole new version. One requests.Session keeps
the connection alive; connection errors and 5xx answers are retried with exponential backoff.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests

from deltagrid.floor.errors import CorruptData, ObjectMissing, StoreError
from deltagrid.store.base import Store

RETRIES = 6
BACKOFF = 0.5  # seconds, doubled each retry
TIMEOUT = (10, 600)  # connect, read
TIMEOUT_RETRIES = 1  # a node silent for a whole read timeout is asked once more, not RETRIES times


def _unhappy(body: str) -> bool:
    return "UploadUnhappinessError" in body or "shares could be placed" in body


def _explain(response: requests.Response) -> str:
    body = response.text
    if _unhappy(body):
        return (
            "the grid could not place enough shares (fewer storage servers connected than "
            "shares.happy)"
        )
    if "NotEnoughSharesError" in body or "NoSharesError" in body:
        return "the grid does not hold enough shares of the object to read it"
    first = body.strip().splitlines()[0] if body.strip() else ""
    return f"HTTP {response.status_code} {response.reason}: {first[:200]}"


class TahoeStore(Store):
    def __init__(self, node: str, cap: str | None, retries: int = RETRIES) -> None:
        self.node = node.rstrip("/")
        self.url = "tahoe://" + self.node.split("://", 1)[1]
        self.cap = cap
        self.retries = retries
        self.session = requests.Session()

    # --- plumbing ------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: Callable[[], Any] | None = None, **kw: Any
    ) -> requests.Response:
        """One web API call, retried on connection errors and 5xx with exponential backoff. A
        read timeout (ten minutes without a byte: a hung node, or a grid far too slow) is retried
        once: six more would keep a nightly run waiting for over an hour before it says so."""
        delay = BACKOFF
        timeouts = 0
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(
                    method,
                    self.node + path,
                    data=body() if body else None,
                    timeout=TIMEOUT,
                    **kw,
                )
            except requests.RequestException as exc:
                timeouts += isinstance(exc, requests.ReadTimeout)
                if attempt == self.retries or timeouts > TIMEOUT_RETRIES:
                    raise StoreError(
                        f"the Tahoe node at {self.node} is not reachable ({exc.__class__.__name__})"
                    ) from None
            else:
                if response.status_code < 500:
                    return response
                if attempt == self.retries:
                    raise StoreError(f"Tahoe node {self.node}: {_explain(response)}")
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _check(self, response: requests.Response, ref: str) -> requests.Response:
        if response.status_code == 410:  # Tahoe's NotEnoughShares/NoShares: down, or gone
            raise ObjectMissing(
                f"the grid cannot supply enough shares of object {ref[:40]}... (are its "
                "storage servers down, fewer than shares.needed connected?)"
            )
        if response.status_code == 404:
            raise ObjectMissing(f"object {ref[:40]}... is missing from the grid")
        if response.status_code >= 400:
            raise StoreError(f"Tahoe node {self.node}: {_explain(response)}")
        return response

    @staticmethod
    def _path(cap: str) -> str:
        if not cap.startswith("URI:") or any(c in cap for c in "/?#% \n"):
            raise CorruptData(f"not a Tahoe capability: {cap[:40]!r}")
        return "/uri/" + cap

    def _cap_from(self, response: requests.Response) -> str:
        cap = self._check(response, "new object").text.strip()
        if not cap.startswith("URI:"):
            raise StoreError(f"Tahoe node {self.node} answered a PUT with {cap[:60]!r}")
        return cap

    # --- objects -------------------------------------------------------------------------------

    def put_bytes(self, data: bytes) -> str:
        return self._cap_from(self._request("PUT", "/uri", body=lambda: data))

    def put_file(self, path: Path) -> str:
        handles: list[Any] = []

        def body() -> Any:
            for h in handles:
                h.close()
            handles.append(open(path, "rb"))  # noqa: SIM115 - closed below, reopened per retry
            return handles[-1]

        try:
            return self._cap_from(self._request("PUT", "/uri", body=body))
        finally:
            for h in handles:
                h.close()

    def get(self, ref: str, offset: int = 0, length: int | None = None) -> bytes:
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        if length == 0:
            return b""
        response = self._check(self._request("GET", self._path(ref), headers=headers), ref)
        data = response.content
        if response.status_code == 200 and headers:  # the node ignored the range
            data = data[offset : None if length is None else offset + length]
        if length is not None and len(data) != length:
            raise CorruptData(f"object {ref[:40]}... is truncated (wanted {offset}+{length})")
        return data

    def size(self, ref: str) -> int:
        """The size an immutable cap encodes is known without its shares: a one-byte read
        proves the grid holds the object (an object whose shares are gone is an error)."""
        size = int(self.info(ref)["size"])
        if size and ref.startswith("URI:CHK:"):
            self.get(ref, 0, 1)
        return size

    def info(self, cap: str) -> dict[str, Any]:
        response = self._check(self._request("GET", self._path(cap) + "?t=json"), cap)
        try:
            kind, info = response.json()
        except (ValueError, TypeError):
            raise StoreError(f"Tahoe node {self.node} sent unreadable JSON") from None
        if kind != "filenode":
            raise CorruptData(f"{cap[:40]}... is a {kind}, not a file")
        return dict(info)

    def check(self, ref: str, add_lease: bool = False, repair: bool = False) -> dict[str, Any]:
        """Tahoe's `t=check` for one object: its health, optionally renewing leases or repairing."""
        query = "?t=check&output=JSON"
        query += "&add-lease=true" if add_lease else ""
        query += "&repair=true" if repair else ""
        response = self._check(self._request("POST", self._path(ref) + query), ref)
        return dict(response.json())

    def holds(self, ref: str, size: int) -> bool:
        """`t=check` without verifying: the node asks the storage servers which shares they
        hold and downloads none (`size` reads a byte, which downloads a whole segment). A
        capability names its object's size, so `size` need not be compared; a literal cap
        holds its own bytes."""
        if ref.startswith("URI:LIT:"):
            return True
        try:
            return bool(self.check(ref).get("results", {}).get("recoverable"))
        except ObjectMissing:
            return False

    def list_refs(self) -> Iterator[str]:
        raise StoreError("a Tahoe grid cannot list its objects")

    # --- the root pointer ----------------------------------------------------------------------

    def create_root(self) -> tuple[str, str]:
        """Create the mutable root pointer; return (writecap, readcap)."""
        writecap = self._cap_from(self._request("PUT", "/uri?format=MDMF", body=lambda: b""))
        readcap = self.info(writecap).get("ro_uri")
        if not isinstance(readcap, str):
            raise StoreError("the Tahoe node did not report a read capability for the root")
        return writecap, readcap

    def _root_cap(self) -> str:
        if not self.cap:
            raise StoreError("no root capability configured for this Tahoe store")
        return self.cap

    def read_root(self) -> bytes | None:
        cap = self._root_cap()
        data = self._check(self._request("GET", self._path(cap)), cap).content
        return data or None

    def replace_root(self, data: bytes) -> None:
        cap = self._root_cap()
        if not cap.startswith("URI:MDMF:") and not cap.startswith("URI:SSK:"):
            raise StoreError(
                "this home holds a read-only capability: backups need the write capability"
            )
        self._check(self._request("PUT", self._path(cap), body=lambda: data), cap)

    def servers(self) -> list[dict[str, Any]]:
        """The storage servers the client node knows, from its welcome page (`GET /?t=json`)."""
        response = self._request("GET", "/?t=json")
        try:
            return list(json.loads(response.text).get("servers", []))
        except ValueError:
            raise StoreError(f"Tahoe node {self.node} sent an unreadable welcome page") from None

    def close(self) -> None:
        self.session.close()
