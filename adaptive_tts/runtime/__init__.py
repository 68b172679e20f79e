"""The seed's runtime features, one module each, composed by :class:`adaptive_tts.SmartAdaptiveBackend`.

==============================  ==========================================  ==========================
seed feature                    class                                       module
==============================  ==========================================  ==========================
hardware detection, profiles    ``detect_hardware``, ``HardwareProfile``     :mod:`.hardware`
memory budget manager           ``MemoryBudgetManager``                      :mod:`.budget`
quantization strategy           ``QuantizationStrategy``, ``quantize_``      :mod:`.quantize`
CPU affinity manager            ``CPUAffinityManager``                       :mod:`.affinity`
pre-synthesis memory estimation ``MemoryEstimator``                          :mod:`.estimator`
system status, throttling risk  ``SystemMonitor``                            :mod:`.monitor`
audio cache                     ``AudioCache``                               :mod:`.cache`
==============================  ==========================================  ==========================

And what they share: :mod:`.planner` (run / wait / refuse from one snapshot, pure),
:mod:`.admission` (reservations of running jobs), :mod:`.process` (memory measurements, fresh-process
probes), :mod:`.quality` (the quantization quality bound), :mod:`.contention` (CPU contention and
the threads it leaves a synthesis step, read by the affinity manager). Modules here may import
:mod:`adaptive_tts.voice` and each other, never the backend or anything above it.
"""
