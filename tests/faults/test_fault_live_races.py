"""Live control races: another thread changing temperature, weight and task weight as fast as it
can while the trainer runs never yields a half-applied step; changes land at step boundaries."""
import itertools
import threading
import time

import workbench as wb
from workbench.methods.logit.kd import kd_loss


class ReadsTwice(wb.methods.Method):
    """KD that reads its hyper-parameters (and the run's task weight) at the start and at the end
    of its forward, with work and a thread switch in between, and records both readings."""

    constraints = {"weight": "nonnegative", "temperature": "positive"}

    def __init__(self, temperature: float = 4.0, weight: float = 1.0):
        super().__init__(weight=weight)
        self.temperature = temperature
        object.__setattr__(self, "run", None)
        object.__setattr__(self, "readings", [])

    def read(self):
        return self.temperature, self.weight, self.run.active_task_weight

    def forward(self, student, teacher, batch):
        first = self.read()
        loss = kd_loss(student.logits, teacher.logits, first[0])
        time.sleep(0.001)  # hand the GIL to the writer, mid-step
        self.readings.append((first, self.read()))
        return {"kl": loss}


def test_changes_from_another_thread_never_yield_a_half_applied_step(digits, make_student, make_teacher):
    method = ReadsTwice()
    run = wb.distill(make_student(), make_teacher(), digits, methods={"twice": method}, epochs=6,
                     batch_size=32, store=None, progress=False)
    object.__setattr__(method, "run", run)
    at_step_end = []  # what the trainer's thread sees once the step is over
    run.on("step_end", lambda r, _: at_step_end.append((method.temperature, method.weight, r.active_task_weight)))
    stop = threading.Event()
    written = []

    def hammer():
        for i in itertools.count():
            if stop.is_set():
                return
            value = 1.0 + i % 7
            method.temperature = value
            method.weight = value / 10
            run.task_weight = value / 7
            written.append(value)

    writer = threading.Thread(target=hammer)
    run.start()
    writer.start()
    run.join(timeout=300)
    stop.set()
    writer.join()
    assert run.status == "finished" and len(method.readings) == run.step == 48
    torn = [(i, a, b) for i, (a, b) in enumerate(method.readings) if a != b]
    assert torn == [], f"a step saw a change half-way: {torn[:3]}"
    assert [a for a, _ in method.readings] == at_step_end  # unchanged until the step ended
    assert len({a for a, _ in method.readings}) > 3, "the writer's changes never reached the run"
    assert len(written) > 100
    # after the run a change applies at once: the last written value is the method's
    assert method.temperature == written[-1]
