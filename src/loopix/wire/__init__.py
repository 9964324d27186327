"""Sans-IO codecs: everything that turns bytes on a socket into typed messages and back."""
