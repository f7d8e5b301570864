"""Perceptual hashing for the hash banks: PDQ hashes of images, the in-process bank index, and
the bank list formats (sha256 lists, PDQ lists, HMA / ThreatExchange exports)."""
