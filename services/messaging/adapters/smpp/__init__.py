"""SMPP 3.4 as an ESME: `pdu` (framing, the PDUs SendSafe speaks, TLVs), `session` (bind, window,
keep-alive, reconnect, deliver_sm handed to a handler and acknowledged after it returns) and `carrier`
(the Carrier port over a session). The protocol rules that need no socket live in domain/smpp.py."""
