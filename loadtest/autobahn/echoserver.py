# Python 2.7, run by loadtest/autobahn.sh inside the Autobahn virtualenv.
#
# Autobahn|Testsuite's reference echo server, exactly what
# `wstest -m echoserver -w ws://127.0.0.1:PORT` starts (the same reactor,
# autobahntestsuite.echo.EchoServerFactory and its protocol, default options),
# with two differences that matter only for running it behind a proxy:
#
# * The Host header's port is not checked against the port the echo server
#   listens on. Stock `wstest -m echoserver` refuses the upgrade with
#   "400 port 9003 in HTTP Host header '127.0.0.1:9003' does not match server
#   listening port 9002": a reverse proxy forwards the client's Host (the
#   proxy's own address) unchanged, as it should, so behind any proxy on
#   another port the stock server fails every case before the first frame.
# * It listens on 127.0.0.1 only, not on every interface.
#
# Usage: python echoserver.py ws://127.0.0.1:9002

from autobahntestsuite import choosereactor  # noqa: F401 (installs the reactor, as wstest does)

import sys

from twisted.internet import reactor
from twisted.python import log

import autobahn
import autobahntestsuite
from autobahn.twisted.websocket import listenWS
from autobahntestsuite.echo import EchoServerFactory


def main():
    url = sys.argv[1]
    log.startLogging(sys.stdout)
    factory = EchoServerFactory(url)
    factory.externalPort = None  # see above: accept the proxy's Host header
    listenWS(factory, interface="127.0.0.1")
    print("Autobahn echo server (autobahntestsuite %s, autobahn %s) on %s, reactor %s"
          % (autobahntestsuite.version, autobahn.version, url, reactor.__class__.__name__))
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
