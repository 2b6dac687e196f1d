"""``twistd grape``'s DHT limit flags reach the DHT node."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from grenache.dht.limits import DEFAULT_MAX_SOURCES, DEFAULT_QUERY_BURST, DEFAULT_QUERY_RATE
from grenache.dht.node import DHTConfig
from grenache.dht.routing import MAX_CONTACTS_PER_IP
from grenache.grape.tap import Options


def dht_config(*argv: str) -> DHTConfig:
    options = Options()
    options.parseOptions(list(argv))
    return options.config().dht_config()


class LimitFlagTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = dht_config()
        self.assertEqual(
            (
                config.query_rate,
                config.query_burst,
                config.max_sources,
                config.max_contacts_per_ip,
            ),
            (DEFAULT_QUERY_RATE, DEFAULT_QUERY_BURST, DEFAULT_MAX_SOURCES, MAX_CONTACTS_PER_IP),
        )

    def test_flags(self) -> None:
        config = dht_config(
            "--query-rate",
            "2.5",
            "--query-burst",
            "10",
            "--max-sources",
            "300",
            "--max-contacts-per-ip",
            "1",
        )
        self.assertEqual(config.query_rate, 2.5)
        self.assertEqual(config.query_burst, 10)
        self.assertEqual(config.max_sources, 300)
        self.assertEqual(config.max_contacts_per_ip, 1)
        self.assertEqual(dht_config("--query-rate", "0").query_rate, 0.0)

    def test_bad_values_are_usage_errors(self) -> None:
        for argv in (
            ["--query-rate", "-1"],
            ["--query-rate", "inf"],
            ["--query-rate", "nan"],
            ["--query-burst", "0"],
            ["--max-sources", "x"],
            ["--max-contacts-per-ip", "0"],
        ):
            self.assertRaises(usage.UsageError, Options().parseOptions, argv)
