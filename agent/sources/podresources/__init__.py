"""Generated protobuf/gRPC modules of the kubelet pod-resources API v1 (tools/genproto.py).

Do not edit the ``api_pb2*`` files: change proto/k8s/podresources/v1/api.proto and run
``make proto``. The client is :mod:`agent.sources.kubelet`.
"""
