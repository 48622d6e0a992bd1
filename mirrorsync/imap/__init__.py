"""mirrorsync's IMAP layer, one job per module.

* `wire`: modified UTF-7, quoting, capabilities, UID sets, the tokenizer, the
  response reader and the bounds on lines and literals; shared by everything below.
* `connection`: TLS, STARTTLS, LOGIN (`connection.login`, the one place that signs
  in), ENABLE and NAMESPACE, for every client; the error words for connecting.
* The store (`store.ImapStore`, the `RemoteStore` of the sync), in layers: `base`,
  `folders`, `selection`, `messages`, `appending`, `store`; on imapclient, through
  `client.Client`, the one subclass that touches imaplib's private parts, and with
  the response parsers of `parse`.
* Push for the daemon: `idle` (a connection on a socket of its own), `notify` (the
  NOTIFY and IDLE sessions), `push` (listeners that reconnect with backoff).

The quick check's look (`mirrorsync.quickimap`) uses `wire` and `connection` only,
which import next to nothing.
"""
