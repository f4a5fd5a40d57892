"""From a CallRecorded and its per-channel ASR results to a CallTranscribed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from models.events import AsrInfo, CallRecorded, CallTranscribed, Segment, Word
from pipeline.asr import AsrOptions, ChannelResult, options_from_settings
from pipeline.audio import AudioInfo, NoSpeechError  # noqa: F401  (NoSpeechError is re-exported here)


@dataclass(frozen=True)
class ChannelJob:
    channel: Optional[int]  # None: the file is mono, transcribe it once
    speaker: str


def plan_channels(ev: CallRecorded, info: AudioInfo) -> list[ChannelJob]:
    """Which channels to transcribe and who speaks on each."""
    if info.channels >= 2 and ev.channels.layout == "stereo":
        mc = ev.channels.manager_channel
        if mc is None:
            return [ChannelJob(0, "unknown"), ChannelJob(1, "unknown")]
        return [ChannelJob(0, "manager" if mc == 0 else "client"),
                ChannelJob(1, "manager" if mc == 1 else "client")]
    # Mono (or a stereo file the event calls mono): one pass, speaker unknown. No diarization: on one
    # mixed channel the only cheap cues (pauses, pitch) would guess, and a wrong "manager" label does the
    # tagger more harm than "unknown", which it already handles.
    return [ChannelJob(None, "unknown")]


def merge(ev: CallRecorded, jobs: list[ChannelJob], results: list[ChannelResult], opts: AsrOptions,
          wall_s: float) -> CallTranscribed:
    segments: list[Segment] = []
    for job, res in zip(jobs, results):
        for t in res.turns:
            segments.append(Segment(
                speaker=job.speaker, start=t.start, end=t.end, text=t.text, avg_logprob=round(t.avg_logprob, 4),
                words=[Word(start=w.start, end=w.end, word=w.word, probability=round(w.probability, 3))
                       for w in t.words]))
    segments.sort(key=lambda s: (s.start, s.end))
    audio_s = max((r.audio_s for r in results), default=0.0)
    langs = [r.language for r in results if r.language]
    detected = ev.language if ev.language != "auto" else (max(set(langs), key=langs.count) if langs else None)
    data = ev.model_dump()
    data.update(
        duration_s=ev.duration_s or round(audio_s, 3),
        language_detected=detected,
        segments=segments,
        asr=AsrInfo(engine=opts.engine, model=opts.model, compute_type=opts.compute_type,
                    audio_s=round(audio_s, 3), wall_s=round(wall_s, 3)),
    )
    return CallTranscribed.model_validate(data)


class CallTranscriber:
    """Fetches a call and transcribes its channels in a process pool, off the event loop.

    One Whisper model per worker process, loaded on first use and kept. On the CPU the channels of one call
    run in parallel as one job each (each channel's chunks batched on their own), so one call uses the
    pool's one-thread processes side by side. On a GPU (``CALLQA_ASR_DEVICE=cuda``) one job takes the whole
    call, so both channels' chunks fill the same batches on the one device.
    """

    def __init__(self, settings):
        self.settings = settings
        self.opts = options_from_settings(settings)
        self._pool = None

    @property
    def pool(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: forking a process that runs an event loop and Kafka clients is unsafe
            self._pool = ProcessPoolExecutor(max_workers=self.settings.asr_workers,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def __call__(self, ev: CallRecorded) -> CallTranscribed:
        import asyncio
        import time

        from pipeline.asr import transcribe_call, transcribe_channel
        from pipeline.audio import TooLongError, probe
        from pipeline.fetch import fetch

        s = self.settings
        path = await asyncio.to_thread(fetch, ev.recording_url, s.allowed_dirs, s.home_dir / "cache" / "recordings",
                                       max_bytes=s.fetch_max_bytes, timeout_s=s.fetch_timeout_s)
        info = await asyncio.to_thread(probe, path)
        if info.duration_s > s.asr_max_audio_s:
            raise TooLongError(f"recording lasts {info.duration_s:.0f}s, over the {s.asr_max_audio_s:.0f}s limit "
                               "(CALLQA_ASR_MAX_AUDIO_S)")
        jobs = plan_channels(ev, info)
        language = ev.language if ev.language != "auto" else None
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        if self.opts.device == "cpu" or len(jobs) == 1:
            futures = [loop.run_in_executor(self.pool, transcribe_channel, str(path), j.channel, language, self.opts,
                                            s.asr_max_audio_s) for j in jobs]
        else:
            futures = [loop.run_in_executor(self.pool, transcribe_call, str(path), [j.channel for j in jobs],
                                            language, self.opts, s.asr_max_audio_s)]
        from concurrent.futures.process import BrokenProcessPool

        from pipeline.asr import AsrError
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures), timeout=s.asr_call_timeout_s)
            if len(futures) < len(jobs):
                results = results[0]
        except BrokenProcessPool as e:
            self._kill_pool()  # a worker died (out of memory, killed): start a fresh pool for the next call
            raise AsrError(f"a transcription worker died ({e}); the call can be retried") from None
        except asyncio.TimeoutError:
            self._kill_pool()  # the workers are still busy with this call: free them for the next one
            raise TimeoutError(f"transcription took longer than {s.asr_call_timeout_s:.0f}s "
                               "(CALLQA_ASR_CALL_TIMEOUT_S)") from None
        out = merge(ev, jobs, list(results), self.opts, time.perf_counter() - t0)
        if not out.segments:
            raise NoSpeechError(f"no speech found in {path.name} ({info.duration_s:.1f}s, "
                                f"{info.channels} channel(s)): silence, music or a dead line")
        return out

    def _kill_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list(getattr(pool, "_processes", {}).values()):
            try:
                proc.kill()
            except Exception:
                pass
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
