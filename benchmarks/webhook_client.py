"""The webhook benchmark's client: `python -m benchmarks.webhook_client URL N SECRET`.

Sends N signed webhook requests at once over loopback (one connection each), every
payload carrying its sequence number and its send time (`time.time()`, read just
before the request goes out). A request that fails (connection error, timeout, 5xx) is
sent again, up to 3 times, with the same delivery id, as a real webhook sender does,
so a server that is not idempotent would show duplicates. Prints one JSON line: the
answers' status counts, the retries and the requests that never got a 2xx.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import aiohttp

from aflow.authoring.webhooks import sign

ATTEMPTS = 3
REQUEST_TIMEOUT_S = 60.0


async def send_all(url: str, n: int, secret: str) -> dict[str, object]:
    statuses: Counter[str] = Counter()
    retries = 0
    failed = 0
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = asyncio.Event()

        async def one(seq: int) -> None:
            nonlocal retries, failed
            await start.wait()
            for attempt in range(ATTEMPTS):
                body = json.dumps({"seq": seq, "sent": time.time()}).encode()
                headers = {"X-Hub-Signature-256": sign(secret, body),
                           "X-GitHub-Delivery": f"bench-{seq}",
                           "Content-Type": "application/json"}
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        statuses[str(response.status)] += 1
                        if response.status < 500:
                            if response.status >= 300:
                                failed += 1
                            return
                except (TimeoutError, aiohttp.ClientError):
                    statuses["error"] += 1
                if attempt + 1 < ATTEMPTS:
                    retries += 1
            failed += 1

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        await asyncio.sleep(0)  # every request waits at the start line
        start.set()
        await asyncio.gather(*tasks)
    return {"statuses": dict(statuses), "retries": retries, "failed": failed}


def main() -> int:
    url, n, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    print(json.dumps(asyncio.run(send_all(url, n, secret))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
