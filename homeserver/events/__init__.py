"""Events: the PDU format per room version, hashes, signatures, IDs, redaction."""
