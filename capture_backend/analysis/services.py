"""Port → service name tables (/etc/services): declared in the contract, where every consumer reads them."""

from __future__ import annotations

from capture_backend.contract import PROTO_NAMES as PROTO_NAMES
from capture_backend.contract import PROTO_NUMBERS as PROTO_NUMBERS
from capture_backend.contract import SERVICES_PATH as SERVICES_PATH
from capture_backend.contract import known_ports as known_ports
from capture_backend.contract import proto_name as proto_name
from capture_backend.contract import service_name as service_name
from capture_backend.contract import service_table as service_table
