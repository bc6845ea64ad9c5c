"""The plant floor's links: Modbus/TCP to the PLC, OPC UA for SCADA/MES, and the PLC probe."""
