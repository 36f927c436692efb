"""Request schemas, one module per API surface; media is decoded and limited here."""
