"""Sans-IO codecs: everything that turns bytes on a socket into typed messages and back.

One rule for errors, the same in every module here (see errors.py): bytes from the peer never
raise. A decoder or state machine returns what it could decode, then one typed error value, and
refuses all input after it; the I/O layer answers (if the protocol has an error message) and closes.
Only the local caller's mistakes raise: a `send_*` the state does not allow (`ProtocolStateError`)
or arguments that cannot be encoded (`ValueError` and its subclasses).
"""
