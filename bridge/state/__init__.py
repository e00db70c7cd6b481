"""The storage seam: every read and write of state goes through the Protocols here."""
