"""OPC UA for SCADA and MES (asyncua, the `plc` extra): the station as a `VisionSystemType` of the
OPC UA for Machine Vision companion specification (vision.py), results from the journal
(results.py), who may do what (access.py), certificates (certificates.py), the older `Station` tree
as an alias (alias.py); asyncua runs in its own process (process.py), fed by the service
(server.py). README "OPC UA for SCADA and MES" is the user's guide."""

from .server import StationOpcUa

__all__ = ["StationOpcUa"]
