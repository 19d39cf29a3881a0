from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("payload", "payload_type", "signatures")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    payload_type: str
    signatures: _containers.RepeatedCompositeFieldContainer[Signature]
    def __init__(self, payload: _Optional[bytes] = ..., payload_type: _Optional[str] = ..., signatures: _Optional[_Iterable[_Union[Signature, _Mapping]]] = ...) -> None: ...

class Signature(_message.Message):
    __slots__ = ("sig", "keyid")
    SIG_FIELD_NUMBER: _ClassVar[int]
    KEYID_FIELD_NUMBER: _ClassVar[int]
    sig: bytes
    keyid: str
    def __init__(self, sig: _Optional[bytes] = ..., keyid: _Optional[str] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("node_id", "join_token", "public_key_spki", "key_assurance", "k8s_token", "tls_csr_der")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_SPKI_FIELD_NUMBER: _ClassVar[int]
    KEY_ASSURANCE_FIELD_NUMBER: _ClassVar[int]
    K8S_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TLS_CSR_DER_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    join_token: str
    public_key_spki: bytes
    key_assurance: str
    k8s_token: str
    tls_csr_der: bytes
    def __init__(self, node_id: _Optional[str] = ..., join_token: _Optional[str] = ..., public_key_spki: _Optional[bytes] = ..., key_assurance: _Optional[str] = ..., k8s_token: _Optional[str] = ..., tls_csr_der: _Optional[bytes] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("key_id", "collector_id", "tls_cert_pem")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    TLS_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    collector_id: str
    tls_cert_pem: bytes
    def __init__(self, key_id: _Optional[str] = ..., collector_id: _Optional[str] = ..., tls_cert_pem: _Optional[bytes] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node_id", "key_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    key_id: str
    def __init__(self, node_id: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("hello", "envelope")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    envelope: Envelope
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., envelope: _Optional[_Union[Envelope, _Mapping]] = ...) -> None: ...

class Resume(_message.Message):
    __slots__ = ("next_seq", "checkpoint")
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    next_seq: int
    checkpoint: LogCheckpoint
    def __init__(self, next_seq: _Optional[int] = ..., checkpoint: _Optional[_Union[LogCheckpoint, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq", "duplicate", "checkpoint")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    duplicate: bool
    checkpoint: LogCheckpoint
    def __init__(self, seq: _Optional[int] = ..., duplicate: _Optional[bool] = ..., checkpoint: _Optional[_Union[LogCheckpoint, _Mapping]] = ...) -> None: ...

class LogCheckpoint(_message.Message):
    __slots__ = ("origin", "tree_size", "root_hash", "note")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    origin: str
    tree_size: int
    root_hash: bytes
    note: str
    def __init__(self, origin: _Optional[str] = ..., tree_size: _Optional[int] = ..., root_hash: _Optional[bytes] = ..., note: _Optional[str] = ...) -> None: ...

class Reject(_message.Message):
    __slots__ = ("seq", "reason", "message")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    reason: str
    message: str
    def __init__(self, seq: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("resume", "ack", "reject")
    RESUME_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    resume: Resume
    ack: Ack
    reject: Reject
    def __init__(self, resume: _Optional[_Union[Resume, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatementRef(_message.Message):
    __slots__ = ("key_id", "seq")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    seq: int
    def __init__(self, key_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class GetInclusionProofRequest(_message.Message):
    __slots__ = ("leaf_index", "statement", "tree_size")
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    leaf_index: int
    statement: StatementRef
    tree_size: int
    def __init__(self, leaf_index: _Optional[int] = ..., statement: _Optional[_Union[StatementRef, _Mapping]] = ..., tree_size: _Optional[int] = ...) -> None: ...

class InclusionProof(_message.Message):
    __slots__ = ("leaf_index", "tree_size", "leaf_hash", "hashes")
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    leaf_index: int
    tree_size: int
    leaf_hash: bytes
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, leaf_index: _Optional[int] = ..., tree_size: _Optional[int] = ..., leaf_hash: _Optional[bytes] = ..., hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("from_size", "to_size")
    FROM_SIZE_FIELD_NUMBER: _ClassVar[int]
    TO_SIZE_FIELD_NUMBER: _ClassVar[int]
    from_size: int
    to_size: int
    def __init__(self, from_size: _Optional[int] = ..., to_size: _Optional[int] = ...) -> None: ...

class ConsistencyProof(_message.Message):
    __slots__ = ("from_size", "to_size", "hashes")
    FROM_SIZE_FIELD_NUMBER: _ClassVar[int]
    TO_SIZE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    from_size: int
    to_size: int
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, from_size: _Optional[int] = ..., to_size: _Optional[int] = ..., hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...
