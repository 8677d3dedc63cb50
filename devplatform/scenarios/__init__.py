"""Scripted store scenarios replayed through a real correlator, and its alerts scored (`make scenarios`).

- spec.py: the scenario file format, loading, and validation against the store config schema;
- synth.py: what the scenario's cameras and tills would publish (FrameAnalysis frames, POS events);
- scoring.py: expectations matched to the alerts raised, and the summary;
- runner.py: Apache Kafka and a correlator started, the messages sent, the alerts collected.
"""

from devplatform.scenarios.runner import main, run
from devplatform.scenarios.scoring import Outcome, match, report, score, summary
from devplatform.scenarios.spec import DEFAULT_DIR, POSES, Scenario, ScenarioError, ScenarioSpec, load_dir, load_scenario, scenario_config
from devplatform.scenarios.synth import POSE_CUES, Outgoing, frame_messages, messages, pose_keypoints, refund_waits

__all__ = [
    "DEFAULT_DIR", "POSES", "POSE_CUES", "Outcome", "Outgoing", "Scenario", "ScenarioError", "ScenarioSpec", "frame_messages", "load_dir",
    "load_scenario", "main", "match", "messages", "pose_keypoints", "refund_waits", "report", "run", "scenario_config", "score", "summary",
]
