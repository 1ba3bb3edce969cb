"""The deployment planner: will it fit, how fast, at what cost and energy, on which GPU.

Pure Python, no torch. Depends on ``membound.config`` only. Module map:

    hardware.py     GPU table (dense peaks, capacity, bandwidth, TDP, links, dated prices)
    local_device.py ``--gpu local``: the device at hand, measured once (in a child process,
                    by membound.bench.device_probe) and cached
    precision.py    weight formats (bytes incl. scales) and KV-cache dtypes
    model_shape.py  ModelShape parsed from any HF config.json; presets.py the reference models
    model_cost.py   parameters, weight bytes per GPU, KV bytes per token, FLOPs
    workload.py     Workload (lengths, concurrency, targets) and EngineLimits
    memory.py       fit, KV capacity, max concurrency, smallest TP, CPU offload
    roofline.py     decode step, prefill, TTFT, TPOT, tokens/s; Efficiency factors
    moe_cost.py     what routed MoE layers cost beyond their weights (tiles, permutes)
    published.py    published MoE serving figures and their sources (the checks' data)
    cost.py         $/M tokens and J/token (estimates)
    plan.py         every GPU option side by side, the recommendation, the JSON document
    bench_record.py the fields read from membound benchmark JSON
    calibrate.py    efficiency factors from membound benchmark JSON
    bench_model.py  what a benchmark run should measure (``plan compare``)
    audit.py        claimed figures against the physical bounds
    plan_options.py the options of a plan request (flags, hardware table, PlanRequest),
                    shared by cli.py and the web console
    report.py, plot.py, cli.py   output and ``membound plan``

See docs/planner.md.
"""
