import numpy as np
import pytest

from services.inference.zones import zone_masks, zone_occupancy
from services.shared.settings import ServiceSettings, SettingsError, load_settings
from services.shared.storeconfig import load_store_config
from tests.unit.test_storeconfig import SAMPLE


def test_zone_occupancy_counts_covered_cells_inside_the_polygon():
    _, camera = load_store_config(SAMPLE).camera("cam-counter-1")
    masks = zone_masks(camera, rows=30, cols=40)
    grid = np.zeros((30, 40), np.float32)
    grid[20:28, 15:20] = 1.0  # a person standing in the customer zone
    result = {zone.id: (fraction, present) for zone, fraction, present in zone_occupancy(grid, masks)}
    assert result["counter-1-customer"][1] is True
    assert result["counter-1-staff"] == (0.0, False)
    assert result["aisle-east"] == (0.0, False)


def test_invalid_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("SW_HTTP_PORT", "99999")
    with pytest.raises(SettingsError, match="SW_HTTP_PORT"):
        load_settings(ServiceSettings)
