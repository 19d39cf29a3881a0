"""The least a Python gRPC collector does per statement, for bench_ingest.py's floor: a
grpc.aio server with the collector's Stream method that reads each StreamRequest (a signed
envelope) and writes one Ack for it, nothing else. Prints its port, then serves until killed."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc

from attestation.v1 import collector_pb2 as pb


async def _stream(requests: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext) -> None:
    async for req in requests:
        await context.write(pb.StreamResponse(ack=pb.Ack(seq=len(req.envelope.payload))))


async def main() -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 2 << 20)])
    handler = grpc.stream_stream_rpc_method_handler(
        _stream,
        request_deserializer=pb.StreamRequest.FromString,
        response_serializer=pb.StreamResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("gpuaudit.v1.Collector", {"Stream": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
