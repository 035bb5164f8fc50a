"""The measures, below the tasks and the validate stage: agreement and error metrics, the paired bootstrap
intervals, perplexity windows, entity spans and the latency timers. A task's hooks compute its metrics with them,
and validation and the gate read the same functions; none of them imports a task or a stage. numpy only at
module level (scipy and psutil where a module says so), so they sit on either side of the deploy line.
"""
