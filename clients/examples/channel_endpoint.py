"""A channel's endpoint: receives Stockwire's publication pushes and applies only those it can verify.

    python clients/examples/channel_endpoint.py --port 9000 --secret "$ENDPOINT_SECRET"

Point a channel at it (`upsertChannels(input: [{code, ..., endpointUrl: "http://host:9000/stock",
endpointSecret}])`). Each push is signed over its exact bytes: `X-Stockwire-Signature: sha256=<hex
HMAC-SHA256 with endpointSecret>`. This endpoint checks it in constant time before parsing anything
(401 otherwise: Stockwire retries), keeps per SKU the value with the highest version (a retry or a
push from another server process never takes a figure back), and answers 2xx so Stockwire records the
values as acknowledged. It prints one line per item it applied or skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def verified(secret: str, body: bytes, signature: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def create_app(secret: str) -> Starlette:
    shows: dict[str, tuple[int, int]] = {}  # sku -> (version, available)

    async def push(request: Request) -> JSONResponse:
        body = await request.body()
        if not verified(secret, body, request.headers.get("X-Stockwire-Signature", "")):
            print("REJECTED  bad signature", flush=True)
            return JSONResponse({"error": "bad signature"}, status_code=401)
        message = json.loads(body)
        for item in message["items"]:
            sku, version, available = item["sku"], int(item["version"]), int(item["available"])
            if version <= shows.get(sku, (0, 0))[0]:
                print(f"SKIPPED   {message['channel']} {sku} version {version} (have {shows[sku][0]})", flush=True)
                continue
            shows[sku] = (version, available)
            print(f"VERIFIED  {message['channel']} {sku} available {available} version {version}", flush=True)
        for alert in message.get("alerts", []):
            print(f"ALERT     {message['channel']} {alert['sku']} {alert['kind']}", flush=True)
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/stock", push, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument(
        "--secret", default=os.environ.get("ENDPOINT_SECRET"), required="ENDPOINT_SECRET" not in os.environ
    )
    args = parser.parse_args()
    uvicorn.run(create_app(args.secret), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
