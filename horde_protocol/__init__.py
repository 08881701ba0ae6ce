"""Wire models of the ComputeHorde protocol, shared by both agents; pure pydantic, no I/O.

enums     executor classes (+ spin-up/GPU/short-code table) and the strict/lenient wire enums
volumes   job input volumes (`Volume` union)
uploads   job output uploads (`OutputUpload` union)
receipts  receipt payloads, `Receipt`, the canonical signing blob, the newer wheel's bounds
messages  one model per `message_type`, the four direction unions, parse/dump helpers, §12 signature blob
structs   small nested structures (streaming details, timing, machine specs)
signing   sr25519 `0x`-hex sign/verify over UTF-8 blobs
paths     canonical relative-path check for validator-chosen paths
"""
