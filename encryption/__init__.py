"""Encryption of backup objects for one or more recipients, and the keys it uses.

Terms used across ``keys.py``, ``stream.py`` and ``docs/encryption-format.md``:

- *DEK* (data encryption key): 32 random bytes drawn for one encrypted stream,
  that is for one stored object. The payload key that encrypts the chunks is
  derived from it with HKDF-SHA256. A DEK is never stored in clear and never
  reused for a second object.
- *KEK* (key encryption key) and *wrapping*: to let a recipient recover the
  DEK, the encryptor derives a single-use KEK from an X25519 key agreement
  with that recipient and encrypts the DEK under it. The encrypted DEK is the
  *wrapped DEK* (``wdek`` in the header).
- *recipient*: an X25519 public key that a stream is encrypted to. Each
  recipient gets its own wrapped DEK, so any one of them can decrypt.
- *identity*: an X25519 private key used to decrypt. An identity matches a
  recipient when its public key is that recipient's key.
- *key id*: the first 16 hex digits of the SHA-256 of a raw 32-byte public
  key. It names a key in headers and messages without revealing anything
  secret, see :func:`encryption.keys.key_id`.
- *AEAD* (authenticated encryption with associated data): here AES-256-GCM.
  Decryption of a chunk either returns the exact plaintext that was encrypted
  with the same key, nonce and associated data, or fails.
- *chunk*: the unit of encryption. The plaintext is cut into chunks of a fixed
  size named in the header, and each chunk is encrypted and authenticated on
  its own, so memory stays bounded and decrypted data can be released chunk by
  chunk.
- *final flag*: one byte of each chunk's nonce, 0x01 for the last chunk of the
  stream and 0x00 for every other chunk. A stream cut at a chunk boundary ends
  in a chunk encrypted without the flag, so the decryptor detects truncation.

Ed25519 keys in ``keys.py`` sign manifests and evidence records. They play no
part in the stream format.
"""
