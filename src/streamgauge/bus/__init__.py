"""The bus between the nodes of a cluster: committed batches and metadata events.

``api`` holds the protocol the core uses, ``codec`` the pure encoding of a committed ``Batch``,
``jetstream`` the NATS JetStream implementation (``--bus nats://HOST:PORT``).
"""
