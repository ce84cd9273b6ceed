#!/usr/bin/env python3
"""What one JetStream publish costs the NATS server, by what the publisher asks of it.

Publishes N messages of 1,100 bytes (a 1 KiB record's CloudEvent) into a fresh file-storage stream
of a fresh nats-server (the one in .venv, 2.15 from PyPI), and reads the server's CPU time from
/proc before and after, until every message is stored. Modes, each run ROUNDS times, alternating:

  noack      plain publish, no reply subject, no headers
  ack        with a reply subject: the server answers each with a PubAck
  noack+id   with a Nats-Msg-Id header: the server checks and records each id (duplicate window)
  ack+id     both: what eventgate's mirror sends to a server before 2.14
  batch+id   with the id, in fast-ingest batches of 4,096 (nats-server 2.14+, `allow_batched`):
             the server acknowledges every 500 and each batch's end; what the mirror sends now

Prints one JSON line per run and the median per mode. The publisher's own speed does not matter:
only the server's CPU per stored message is reported.

    .venv/bin/python scripts/nats-cost.py [N] [ROUNDS] [MODE,MODE...]
"""

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

import nats

SERVER = os.path.join(os.path.dirname(__file__), "..", ".venv", "bin", "nats-server")
MODES = ["noack", "ack", "noack+id", "ack+id", "batch+id"]
BATCH = 4096
FLOW = 500


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(mode, n, size=1100):
    port = free_port()
    with tempfile.TemporaryDirectory() as store:
        server = subprocess.Popen([SERVER, "-js", "-p", str(port), "-sd", store],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            nc = await nats.connect(f"nats://127.0.0.1:{port}")
            js = nc.jetstream()
            config = {"name": "COST", "subjects": ["cost.>"], "allow_batched": mode.startswith("batch")}
            await nc.request("$JS.API.STREAM.CREATE.COST", json.dumps(config).encode(), timeout=5)
            inbox = nc.new_inbox()
            answered = 0
            all_answered = asyncio.Event()
            # Batches: the highest publish acknowledged in the open batch, and batches ended.
            acked, ended, current = 0, 0, -1
            progress = asyncio.Event()

            async def on_answer(msg):
                nonlocal answered, acked, ended
                if mode.startswith("batch"):
                    answer = json.loads(msg.data)
                    if answer.get("type") == "ack":
                        # Only the open batch's acknowledgements count (a late one of the last
                        # batch would lift the flow control).
                        if f".{tag}-{current}." in msg.subject:
                            acked = max(acked, answer["seq"])
                    elif "count" in answer:
                        ended += 1
                    else:
                        raise SystemExit(f"batch answer: {answer}")
                    progress.set()
                    return
                answered += 1
                if answered >= n:
                    all_answered.set()

            tag = inbox.rsplit(".", 1)[1]
            await nc.subscribe(inbox + ".>", cb=on_answer)
            payload = b"x" * size
            before = cpu_seconds(server.pid)
            if mode.startswith("batch"):
                for first in range(0, n, BATCH):
                    size_of = min(BATCH, n - first)
                    acked, current = 0, first
                    for k in range(1, size_of + 1):
                        # Flow control: at most two acknowledgement intervals unanswered.
                        while k - acked > 2 * FLOW:
                            progress.clear()
                            await nc.flush()
                            await asyncio.wait_for(progress.wait(), 30)
                        reply = f"{inbox}.{tag}-{first}.{FLOW}.fail.{k}.{0 if k == 1 else 1}.$FI"
                        headers = {"Nats-Msg-Id": f"orders-0-{first + k - 1}"}
                        await nc.publish("cost.orders", payload, reply=reply, headers=headers)
                    await nc.publish("cost.orders", b"", reply=f"{inbox}.{tag}-{first}.{FLOW}.fail.{size_of + 1}.3.$FI")
                    await nc.flush()
                target = (n + BATCH - 1) // BATCH
                while ended < target:
                    progress.clear()
                    await asyncio.wait_for(progress.wait(), 120)
            for i in range(0 if not mode.startswith("batch") else n, n):
                headers = {"Nats-Msg-Id": f"orders-0-{i}"} if "id" in mode else None
                reply = f"{inbox}.{i}" if mode.startswith("ack") else ""
                await nc.publish("cost.orders", payload, reply=reply, headers=headers)
                if i % 1000 == 999:
                    await nc.flush()
            await nc.flush()
            if mode.startswith("ack"):
                await asyncio.wait_for(all_answered.wait(), 120)
            stored = 0
            for _ in range(2400):
                stored = (await js.stream_info("COST")).state.messages
                if stored >= n:
                    break
                await asyncio.sleep(0.05)
            after = cpu_seconds(server.pid)
            await nc.close()
        finally:
            server.terminate()
            server.wait()
    return {"mode": mode, "messages": n, "stored": stored, "server_cpu_us_per_message": round((after - before) / n * 1e6, 2)}


async def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    modes = sys.argv[3].split(",") if len(sys.argv) > 3 else MODES
    version = subprocess.run([SERVER, "--version"], capture_output=True, text=True).stdout.strip()
    results = {m: [] for m in modes}
    for _ in range(rounds):
        for mode in modes:
            r = await run(mode, n)
            print(json.dumps(r), flush=True)
            results[mode].append(r["server_cpu_us_per_message"])
    print(f"\n{version}, {n} messages of 1,100 B, median of {rounds} rounds, server CPU per stored message:")
    for mode in modes:
        print(f"  {mode:9} {statistics.median(results[mode]):6.2f} µs")


if __name__ == "__main__":
    asyncio.run(main())
