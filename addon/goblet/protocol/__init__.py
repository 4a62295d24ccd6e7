"""Pure git smart-HTTP protocol code: bytes in, typed values or ProtocolError out."""
